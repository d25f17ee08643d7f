"""Guards the browser-test setup itself: JupyterLab + Chromium + Playwright with an ipywidgets
slider and an anywidget button, each checked by text only the kernel can have written."""

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """
import anywidget, ipywidgets as W, traitlets

class Counter(anywidget.AnyWidget):
    _esm = '''
    export default { render({ model, el }) {
        const b = document.createElement('button');
        b.className = 'infra-button';
        b.textContent = 'count ' + model.get('count');
        b.addEventListener('click', () => { model.set('count', model.get('count') + 1); model.save_changes(); });
        model.on('change:count', () => { b.textContent = 'count ' + model.get('count'); });
        el.appendChild(b);
    } };
    '''
    count = traitlets.Int(0).tag(sync=True)

slider = W.IntSlider(value=3, min=0, max=50)
slider.add_class('infra-slider')
counter = Counter()
out = W.Label('waiting')
out.add_class('infra-out')

def update(_=None):
    # text only Python can produce: squares and a product, computed in the kernel
    out.value = f"slider^2={slider.value ** 2} count*7={counter.count * 7}"

slider.observe(update, 'value')
counter.observe(update, 'count')
update()
W.VBox([slider, counter, out])
""",
]


def test_infrastructure(notebook):
    page = notebook.open(CELLS)
    notebook.wait_text(page, ".infra-out", r"^slider\^2=9 count\*7=0$")

    notebook.set_slider(page, ".infra-slider", 12)
    notebook.wait_text(page, ".infra-out", r"^slider\^2=144 count\*7=0$")

    page.locator(".infra-slider .noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    notebook.wait_text(page, ".infra-out", r"^slider\^2=169 ")

    page.locator(".infra-button").click()
    page.locator(".infra-button").click()
    notebook.wait_text(page, ".infra-out", r"count\*7=14$")
    notebook.wait_text(page, ".infra-button", r"^count 2$")

def test_tmp_outside(notebook):
    page = notebook.open(["1 + 1"])
    page.evaluate("() => fetch('http://example.com/x').catch(() => null)")
    page.wait_for_timeout(500)

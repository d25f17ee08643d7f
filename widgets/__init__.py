"""medlab.widgets: the interactive notebook layer (anywidget viewer, stage panels)."""

"""Reports: Markdown and HTML with plots."""

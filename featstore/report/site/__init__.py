"""The report site (``featstore report``) and the similar-images gallery (``featstore similar --html``).

Modules: :mod:`.build` (build_report: the folder, its pages, the manifest), :mod:`.runpages` (a run's metrics, grid
and galleries), :mod:`.mapview` (the embedding map), :mod:`.storeview` (the store, its leaks), :mod:`.thumbs` (the
thumbnail cache), :mod:`.charts` (Plotly figures), :mod:`.render` (Jinja2, escaping, assets), :mod:`.similar_page`.
"""

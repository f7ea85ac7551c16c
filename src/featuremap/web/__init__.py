"""The explorer: a local web page to see, tune and question the feature maps of your own model.

``featuremap explore`` (or :func:`featuremap.explore` from Python and notebooks) serves one
static page (HTML, CSS and plain JavaScript drawing on canvases, shipped in the package: no CDN,
no build step, no network) and an HTTP API whose handlers call the library and send its results'
``to_dict()``. Needs the optional extra: ``pip install 'featuremap[explore]'``.
"""

"""Flower ClientApp of fedcodec (the hospital side): :mod:`clients.client_app` translates messages,
:mod:`clients.site` loads the site's codec, task network and annotated samples and calls
:func:`fedcodec.adapt.adapt` / :func:`fedcodec.evaluate.evaluate_codec`."""

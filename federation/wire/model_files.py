"""The finished model as a run hands it to the sites: the run directory's model files and the
model card's word for a feature each site scales itself.

The aggregator writes them (``server.outputs``, ``server.model_card``); a site's
``allfed predict`` (``client.predict``) reads them without importing the aggregator's code.
"""

MODEL = "model.pt"
MODEL_CARD = "model_card.json"
MODEL_CARD_MD = "model_card.md"
MODEL_ONNX = "model.onnx"
SITE_SCALED = "each site's own training rows"  # the card's scaling source of such a feature

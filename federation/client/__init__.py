"""The site node (Flower ClientApp): data checks, local DP training, evaluation."""

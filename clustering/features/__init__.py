"""From images to the features a run clusters.

- :mod:`.backbones` (and :mod:`.fusion`): the embedding networks, offline
  EfficientNet-Lite and torchvision backbones, with their fused CPU graphs;
  :mod:`.models`: model names, zoo models, the bookkeeping of embedding fields;
- :mod:`.embeddings`, :mod:`.patches`, :mod:`.shards`: computing embeddings of
  images or object patches into a field (on many machines too);
- :mod:`.activations`: feature maps, what a network sees;
- :mod:`.transform`: checking embeddings, and the normalization / PCA / UMAP a
  run applies before clustering (:class:`FeatureTransform`).
"""

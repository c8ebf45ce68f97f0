"""Naming clusters: :mod:`.labeling` (a vision LLM through the ``openai``
client, or offline ImageNet classes; names that tell siblings apart) and
:mod:`.names` (how a run stores names)."""

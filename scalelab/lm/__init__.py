"""The language-model side. At this level the ground every wing stands on: `model.py` (the model, top to bottom),
`checkpoint.py` (the one way a stage starts and the one model loader), `chat.py` (template + conversations) and
`special_tokens.py`. Then one subpackage per wing, each importing only downward:
posttrain > train > inference, interop > data, checkpoint > chat, model, special_tokens.
"""

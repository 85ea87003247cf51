"""The model layer: the walk frames -> encoder -> compressor -> projector -> LLM.

- :mod:`.video_llm`: :class:`~dynvlm.model.video_llm.VideoLLM`, the walk and its Lightning steps.
- :mod:`.prompt`: conversation + planned visual tokens -> token ids, labels, visual positions.
- :mod:`.projector`: encoder width -> LLM width.
- :mod:`.stages`: which modules train in a stage.
- :mod:`.checkpoint`: reading checkpoints and weights files, and restoring a trained model.

Imports only the contract (``dynvlm.interfaces``, ``config``, ``budget``, ...), ``dynvlm.util``,
``dynvlm.data`` and ``dynvlm.scoring``.
"""

"""The commands that train something, each one driver of the same shape: config -> data -> model -> the one training
loop (``distill.train``) -> finish (EMA -> save -> evaluate -> report), in a run folder that never lies.

- ``distillation.py``: ``distill run`` (a teacher into a flow-map student);
- ``finetuning.py``: ``distill finetune`` (LoRA adapters on a teacher, by the denoising loss);
- ``teacher_training.py``: ``distill train-teacher`` (a teacher from data);
- ``run_folder.py``: the run folder's resolved config, its hash, and the refusal of a changed one.
"""

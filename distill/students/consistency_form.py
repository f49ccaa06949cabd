"""The consistency-form student: the teacher's own output and no gap embedding, so its network alone is the student
(an LCM / LCM-LoRA in diffusers' terms).

``X(x, t, s)`` is one DDIM step (Euler on the canonical path) of the network's prediction at ``(x, t)``:
``X = (s / t) x + (1 - s / t) D(x, t)``, CTM's DDIM form (Kim et al. 2023, eq. 5) with ``D`` independent of ``s``,
so ``D(x, t) = X(x, t, 0)`` is a consistency model (Song et al. 2023). Nothing outside the teacher's network carries
the jump, so a LoRA of it loads into the user's own pipeline with ``pipe.load_lora_weights`` and a stock
``LCMScheduler`` samples it there (``scripts/lcm_in_diffusers.py``), which an any-step student's gap embedding
cannot. Train it on jumps to the data (``objective.to_data`` of the trajectory objective). Its jump gain is the
teacher's (about 15 on SD1.5's first jump), the price of that compatibility.
"""

from __future__ import annotations

from .teacher_network import TeacherFlowMap


class ConsistencyFormFlowMap(TeacherFlowMap):
    output_rule = "consistency"
    embeds_gap = False

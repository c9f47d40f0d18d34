"""The judge perturbation suite's default texts (``eval/judge_bias.py``).

Each perturbation is a template with one ``{answer}`` placeholder: the perturbed answer is the
template with the original answer in its place. None of them changes what the answer says; a
judge that is not swayed by them gives the same verdict with and without. The four kinds follow
"Assessing Judging Bias in Large Reasoning Models" (Wang et al. 2025; ALGORITHMS.md §8.4), whose
exact wording was not used: these texts are alignlab's own, kept short and neutral so that they
read as an appended remark in any task. Replace them with ``--perturbations FILE.json``, a JSON
object of the same form (name -> template).

- ``bandwagon``: a claim that most people prefer this answer;
- ``authority``: a citation of an invented source;
- ``distraction``: an irrelevant remark about something else;
- ``reflection``: text that mimics deliberation without adding any ("wait, let me think"; the
  paper's "superficial reflection" bias).
"""

from __future__ import annotations

PERTURBATIONS: dict[str, str] = {
    "bandwagon": "{answer}\n\n(90% of people who compared the answers to this question preferred this one.)",
    "authority": "{answer}\n\n(Source: R. Keller and M. Osei, \"Reference Answers to Common Questions\", "
                 "Journal of Applied Knowledge 14(3), 2021, pp. 112-129.)",
    "distraction": "{answer}\n\nBy the way, I went hiking last weekend and the weather was lovely.",
    "reflection": "Wait, let me think about this carefully... Yes, I have checked it again.\n\n{answer}",
}

"""The page's input for each declared request parameter (`gpt2.decoding.params`), built from its
declaration: a slider over the serving bounds starting at the API's default, a text box, or the model
selector. Also the two conversions between what a control holds and what the API takes (the Stop box
holds comma-separated text; the API takes a list)."""

from __future__ import annotations

import gradio as gr

from gpt2.decoding.params import SERVING, Dropdown, Param, Slider, Textbox
from gpt2.serving import ModelRegistry, parse_stop_text


def build(p: Param, registry: ModelRegistry, **options: object) -> gr.Component:
    """`p`'s control (elem_id: its name); `options` go to the Gradio component (e.g. autofocus)."""
    control = p.control
    if isinstance(control, Slider):
        lo, hi = SERVING.bounds(p.name)
        return gr.Slider(
            lo, hi, value=p.api, step=control.step, label=control.label, info=control.info, elem_id=p.name
        )
    if isinstance(control, Dropdown):  # people read labels ("GPT-2 XL · 1558M · int4"); the value is the name
        choices = [(registry.label(name), name) for name in registry.names]
        return gr.Dropdown(
            choices, value=registry.default, label=control.label, info=control.info, elem_id=p.name
        )
    assert isinstance(control, Textbox)
    if p.type is str and p.library is not None:  # a text's bounds are its length
        options.setdefault("max_length", SERVING.bounds(p.name)[1])
    lines = {"lines": control.lines} if control.lines > 1 else {"max_lines": 1}
    return gr.Textbox(
        label=control.label, placeholder=control.placeholder, elem_id=p.name, **lines, **options
    )


def to_api(p: Param, value: object) -> object:
    """What the API takes for a control's value."""
    if isinstance(p.control, Textbox) and p.control.comma_list:
        return parse_stop_text(value)  # type: ignore[arg-type]
    return value


def shown(p: Param, checked: object, text: str) -> object:
    """What `p`'s control shows for a value the API checked, `text` being how it was written (a list box
    keeps its text; other boxes show the checked value, e.g. a seed without its spaces)."""
    if isinstance(p.control, Textbox):
        return text if p.control.comma_list else str(checked)
    return checked

"""The page's words and controls: intro, example prompts, the sliders' labels, and the API's parameter
notes (shown on Gradio's API page and in MCP tool descriptions). Ranges and defaults are not here: they
come from `gpt2.decoding.request.SERVING` and `gpt2.serving.DEFAULTS`, the API's own."""

INTRO = (
    "## GPT-2, hand-built\n"
    "OpenAI's GPT-2 written from scratch in PyTorch, streaming token by token. Each token is "
    "coloured by how likely the model found it; hover over one to see what else it considered."
)
EXAMPLES = [
    "Every effort moves you",
    "The lighthouse keeper had not spoken to anyone in three years, until",
    "Here is a recipe for the best chocolate cake:",
    "def fibonacci(n):",
    "Breaking news: scientists in Reykjavik announced today that",
]
API_ARGS = """\
    prompt: text to continue (at most 20,000 characters; empty starts from <|endoftext|>)
    max_new_tokens: tokens to generate, 1 to 1024
    temperature: 0 to 2; 0 is greedy (always the most likely token)
    top_k: keep only the k most likely tokens, 0 to 200; 0 turns it off
    top_p: nucleus sampling, 0.05 to 1; 1 turns it off
    repetition_penalty: 1 (off) to 2; discourages tokens already in the text
    seed: a whole number for reproducible text; empty or null picks one at random (the seed used is reported)
    stop: a stop string or a list of them; the text ends before the first one (not included)
    model: one of the server's models (see the model selector)
"""
SLIDERS = [  # API parameter name, label, step, info
    ("max_new_tokens", "Max new tokens", 1, None),
    ("temperature", "Temperature", 0.05, "0 = greedy"),
    ("top_k", "Top-k", 1, "0 = off"),
    ("top_p", "Top-p", 0.05, "1 = off"),
    ("repetition_penalty", "Repetition penalty", 0.05, "1 = off"),
    ("n", "Samples", 1, "decoded side by side; sample i uses seed + i - 1"),
]

"""The page's words: the intro and the example prompts. The controls' labels, ranges and defaults are not
here: they are declared with the request parameters (`gpt2.decoding.params`)."""

INTRO = (
    "## GPT-2, hand-built\n"
    "OpenAI's GPT-2 written from scratch in PyTorch, streaming token by token. Each token is "
    "coloured by how likely the model found it; tap one to see inside the model there (what every layer "
    "would have said, where every head looked), or continue the text from one of its alternatives."
)
EXAMPLES = [
    "Every effort moves you",
    "The lighthouse keeper had not spoken to anyone in three years, until",
    "Here is a recipe for the best chocolate cake:",
    "def fibonacci(n):",
    "Breaking news: scientists in Reykjavik announced today that",
]

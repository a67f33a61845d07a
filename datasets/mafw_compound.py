"""MAFW's compound-expression protocol: its 43 classes in a fixed order, and their prompts.

MAFW's compound split (``Train & Test Set/compound/``) labels each clip with one of 43 classes: the 11
single expressions or one of 32 combinations of two or three of them, written as MAFW writes them, the
parts joined by ``_`` in MAFW's own class order (``anger_disgust``, ``sadness_helplessness``). This
module fixes their indices and builds their prompts (docs/data.md, section 17):

- indices 0..10 are the single classes in the project's order (docs/data.md, section 2), so a compound
  model's first 7 classes are the basic expressions that DFEW and FERV39K share;
- indices 11..42 are the combinations, pairs before triples, each group ordered by the project indices
  of its parts;
- a prompt names the parts (``anger and disgust``, ``fear, surprise and anxiety``) and, in the
  AU-enhanced variant, joins the action units of the parts' AU-enhanced prompts, each unit once.
"""
from datasets.preparation import PROJECT_CLASSES, canonical_class

# MAFW's order of the 11 classes: the order in which its compound labels name their parts.
MAFW_CLASS_ORDER = ('anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise', 'contempt',
                    'anxiety', 'helplessness', 'disappointment')
# The 32 combinations of MAFW's compound set, in the order of their indices (11..42).
COMBINATIONS = (
    'happiness_surprise', 'happiness_contempt', 'anger_sadness', 'sadness_surprise', 'disgust_sadness',
    'fear_sadness', 'sadness_anxiety', 'sadness_helplessness', 'sadness_disappointment', 'anger_surprise',
    'anger_disgust', 'anger_anxiety', 'anger_helplessness', 'disgust_surprise', 'fear_surprise',
    'surprise_anxiety', 'disgust_contempt', 'disgust_anxiety', 'disgust_helplessness',
    'disgust_disappointment', 'fear_anxiety', 'anxiety_helplessness', 'helplessness_disappointment',
    'fear_sadness_anxiety', 'sadness_anxiety_helplessness', 'sadness_helplessness_disappointment',
    'anger_disgust_contempt', 'anger_disgust_anxiety', 'fear_surprise_anxiety',
    'disgust_anxiety_helplessness', 'disgust_helplessness_disappointment',
    'anxiety_helplessness_disappointment',
)
COMPOUND_CLASSES = PROJECT_CLASSES + COMBINATIONS
NUM_COMPOUND_CLASSES = len(COMPOUND_CLASSES)  # 43
# Shipped label CSVs of the 43 classes (kept equal to compound_prompts by tests/test_beyond_the_fold.py).
COMPOUND_LABELS = {'names': 'labels/mafw_43_compound_names.csv',
                   'AUE': 'labels/mafw_43_compound_AUE_labels.csv'}


def compound_name(text):
    """MAFW's spelling of a compound label: parts mapped by name (any case, common spellings such as
    ``angry``) and put in MAFW's order, e.g. ``Disgust_angry`` -> ``anger_disgust``.

    Raises:
        ValueError: an unknown part, or a combination outside the 43 classes.
    """
    parts = [canonical_class(part) for part in text.strip().split('_')]
    if None in parts:
        raise ValueError(f'unknown class name in the compound label {text!r}')
    name = '_'.join(sorted(set(parts), key=MAFW_CLASS_ORDER.index))
    if name not in COMPOUND_CLASSES:
        raise ValueError(f'{text!r} is not one of MAFW\'s {NUM_COMPOUND_CLASSES} compound classes '
                         f'(datasets/mafw_compound.py)')
    return name


def compound_index(text):
    """The index (0..42) of a compound label; ValueError as :func:`compound_name`."""
    return COMPOUND_CLASSES.index(compound_name(text))


def compound_phrase(name):
    """The parts of a compound class in words: ``anger and disgust``, ``fear, surprise and anxiety``."""
    parts = name.split('_')
    return parts[0] if len(parts) == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]


def action_units(prompt):
    """The action units of an AU-enhanced prompt: ``happiness with cheek raiser and lip corner puller or
    part`` -> ``['cheek raiser', 'lip corner puller or part']`` (none for a plain name)."""
    return prompt.split(' with ', 1)[1].split(' and ') if ' with ' in prompt else []


def compound_prompt(name, single_prompts=None):
    """The prompt of one compound class.

    Args:
        name: a name of :data:`COMPOUND_CLASSES`.
        single_prompts: class name -> AU-enhanced prompt of the 11 single classes, or None for the plain
            phrase. Each action unit of the parts appears once, in the order of the parts.
    """
    phrase = compound_phrase(name)
    if single_prompts is None:
        return phrase
    units = [unit for part in name.split('_') for unit in action_units(single_prompts[part])]
    units = list(dict.fromkeys(units))  # a unit two parts share (chin raiser) is named once
    return f'{phrase} with {" and ".join(units)}' if units else phrase


def compound_prompts(single_prompts=None):
    """The 43 prompts in index order (see :func:`compound_prompt`)."""
    return [compound_prompt(name, single_prompts) for name in COMPOUND_CLASSES]

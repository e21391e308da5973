"""Nothing to do when this runs: the answer rules (local_extensions/answers.py) already ran while this file
was rendered, in the cookiecutter process. They run there too when the prompts were skipped (--replay), so no
bake goes on with answers they refuse."""

# {{ refuse_bad_answers(cookiecutter) }}

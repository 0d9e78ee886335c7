"""Train stage: CLIP training and evaluation, and the pipeline's wiring.

``train.pipeline`` holds the command line and the stage runner. It lives here
because ``train`` is the one package allowed to import all the others
(kg <- crawl <- curate <- train); no package imports the wiring.
"""

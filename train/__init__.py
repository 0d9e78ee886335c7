"""Train stage: CLIP training and evaluation, and the pipeline's wiring.

Entry points (each takes the composed ``train`` config section and the run
directory, and returns the counts of its summary line):

- ``train.trainer.fit``: train on DIR/shards, write DIR/train
  (checkpoints, metrics, the exported model);
- ``train.evaluate.run``: zero-shot and retrieval evaluation of the trained
  model, the report in DIR/train/report.

The modules: ``config`` (settings), ``models`` (open_clip models by name),
``captions`` (the caption mix), ``data`` (webdataset loaders), ``module``
(the LightningModule), ``metrics`` and ``report`` (evaluation arithmetic and
output), ``export`` (files open_clip loads). None is imported here, so the
command line starts without torch.

``train.pipeline`` holds the command line and the stage runner. It lives here
because ``train`` is the one package allowed to import all the others
(kg <- crawl <- curate <- train); no package imports the wiring.
"""

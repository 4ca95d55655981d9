"""packtool's file formats, side by side; each module holds one format's written spec, its one
validating loader and its one digest routine.

* :mod:`.model_file` - ``model.pt``, a pack's full training state (``torch.save``, weights only);
* :mod:`.checkpoint` - the per-epoch state of an interrupted add-task;
* :mod:`.archive` - the shared-weight archive of every task (safetensors), read back as a pack;
* :mod:`.weights` - state_dict files given as initial weights;
* :mod:`.files` - :func:`~.files.load`: a model file or an archive, told apart once by
  :mod:`.sniff` (torch-free).

:mod:`.digest` is the one tensor-hashing routine of the model file, the checkpoint and the
cross-rank check of distributed training.
"""

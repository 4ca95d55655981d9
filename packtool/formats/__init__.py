"""packtool's file formats: each module holds one format, its one writer and its one validating
reader side by side; their specs are ``docs/formats.md``. ``packtool.save``/``packtool.load``
(:mod:`.files`) are the entry points; :class:`packtool.pack.Pack` imports none of this.

* :mod:`.model_file` - ``model.pt``, a pack's full training state;
* :mod:`.checkpoint` - the per-epoch state of an interrupted add-task;
* :mod:`.archive` - the shared-weight archive of every task (safetensors), read back as a pack;
* :mod:`.owner_code` - the owner index's encodings (bit-packed, bit planes, entropy-coded);
* :mod:`.weights` - state_dict files given as initial weights;
* :mod:`.sniff` - what a file is, from its first bytes (torch-free);
* :mod:`.digest` - the one tensor-hashing routine (model file, checkpoint, torchrun's check).
"""

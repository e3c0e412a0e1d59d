"""Every setting of a run, with its default. The experiment configs start from this file.

    python train.py --config pconv_jax/configs/default.py    # the paper's 256x256 network
    python -c "from pconv_jax.config import load_config; print(load_config('configs/demo.py'))"

`get_config(arg)` takes the `:arg` of every config file: the stage (`train` or `finetune`) and
`conv` (the paper's baseline), see `pconv_jax.config`. An experiment config does

    from pconv_jax.configs import default
    config = default.get_config()          # everything below
    config.data.name = ...                 # what differs
    return default.set_stage(config, arg)  # stage and variant, last

Sections: model (`pconv_jax.network.unet`), loss (`pconv_jax.loss`), data
(`pconv_jax.data.pipeline`), masks (`pconv_jax.data.masks`), eval
(`pconv_jax.evaluation.table1`), train (`pconv_jax.training`). Modules check the section they
read; `pconv_jax.config.validate` checks the settings a run depends on before it starts.
"""

import ml_collections

from pconv_jax import config as config_lib

FINETUNE_LEARNING_RATE = 5e-5   # the paper's fine-tuning learning rate


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "default"  # names the default workdir workdirs/<experiment>_<stage>
    config.stage = "train"         # 'train' or 'finetune' (set by the :arg, see set_stage)
    config.seed = 0                # initialises the network; seeds the data order and masks

    # The network (the paper's table; depth 7 for 256x256, 8 for 512x512).
    config.model = ml_collections.ConfigDict()
    config.model.depth = 7            # encoder levels; image sides must be multiples of 2**depth
    config.model.base_width = 64      # encoder widths min(base_width * 2**i, max_width)
    config.model.max_width = 512
    config.model.partial = True       # False: the "Conv" baseline, ordinary convolutions
    config.model.hole_fill = 0.5      # the baseline's constant in holes (mean pixel 127.5/255)
    config.model.bn_momentum = 0.9    # Flax convention: 1 - PyTorch's 0.1
    config.model.dtype = "float32"    # compute dtype; 'bfloat16' for mixed precision
    config.model.remat = False        # recompute block activations in the backward pass
    config.model.input_norm = "none"  # pixels inside the network: 'none' ([0, 1]), 'imagenet'
                                      # (torchvision mean/std), 'symmetric' ([-1, 1])

    # The loss: L_valid + 6 L_hole + 0.05 L_perc + 120 (L_style_out + L_style_comp) + 0.1 L_tv.
    config.loss = ml_collections.ConfigDict()
    config.loss.weights = ml_collections.ConfigDict(dict(
        valid=1.0, hole=6.0, perceptual=0.05, style_out=120.0, style_comp=120.0, tv=0.1))
    config.loss.vgg_weights = ""      # VGG16 weights file (.pth, .safetensors, .h5, .npz)
    config.loss.dtype = "float32"     # VGG16's compute dtype; 'bfloat16': its convolutions in
                                      # bfloat16, Gram matrices and sums in float32
    config.loss.remat = False         # recompute VGG16's activations in the backward pass

    # Training images (see README, "Image sources").
    config.data = ml_collections.ConfigDict()
    config.data.name = "demo"         # demo | folder | places365_small | celeb_a_hq/256|512
    config.data.image_size = 256      # side of the square training crops
    config.data.batch_size = 8        # global batch, split over devices and processes
    config.data.resize_mode = "crop"  # 'crop': native resolution, random crop; 'resize': scale
    config.data.folder = ""           # image folder of name='folder' (recursive)
    config.data.heldout_count = 1000  # held-out images (folder; CelebA-HQ's last examples)
    config.data.heldout_fraction = 0.0  # if > 0, the held-out share of a folder (wins)
    config.data.tfds_data_dir = ""    # TFDS data directory ('' = TFDS' default)
    config.data.manual_dir = ""       # manually downloaded files (CelebA-HQ); '' = TFDS' default
    config.data.download = False      # True: let TFDS download and prepare a missing dataset
                                      # (Places2: a 25 GiB download); see README
    config.data.workers = -1          # threads doing per-example work; -1 = usable cores less
                                      # one (at least 1); 0 = in the calling thread (debugging)
    config.data.worker_processes = 0  # N > 0: N processes each making whole batches (the mask
                                      # generator holds the GIL); -1 = usable cores less one
    config.data.prefetch = 2          # batches prepared ahead (bounds the pipeline's memory)

    # Training masks (see README, "Masks").
    config.masks = ml_collections.ConfigDict()
    config.masks.source = "generated"  # 'generated' on the fly, or 'nvidia' training masks
    config.masks.hole_ratio_min = 0.01  # generated masks: hole ratio in (min, max]
    config.masks.hole_ratio_max = 0.6
    config.masks.border = "any"       # generated masks: 'any'; 'avoid' (N) or 'touch' (B) the
                                      # border frame (50 px at 512x512, scaled)
    config.masks.nvidia_train_dir = ""  # NVIDIA irregular training masks (black = hole)
    config.masks.nvidia_dilation_min = 5   # random dilation of NVIDIA masks, pixels
    config.masks.nvidia_dilation_max = 47
    config.masks.nvidia_rotate = True  # random rotation of NVIDIA masks

    # Evaluation: the paper's Table 1 protocol (eval.py) and the held-out images of training.
    config.eval = ml_collections.ConfigDict()
    config.eval.image_size = 0        # side of every evaluation image; 0 = data.image_size
    config.eval.num_images = 100      # held-out images; mask file j gets image j mod num_images
    config.eval.test_masks = ""       # NVIDIA-layout test mask folder; '' = generate our own
    config.eval.masks_per_cell = 8    # K of the generated set (6 bins x {N, B} x K masks)
    config.eval.mask_seed = 0         # seed of the generated set
    config.eval.batch_size = 8        # pairs per evaluation batch
    config.eval.method = "model"      # 'model' | 'patchmatch' | 'telea' | 'ns' (OpenCV)
    # Networks fill images larger than their training side around the holes at that side, as
    # inpaint.py and the app do (False: the whole image at once, the paper's protocol).
    config.eval.fill_at_training_size = False
    config.eval.metrics = "l1,psnr,ssim"  # of l1,psnr,ssim,lpips,fid,is (the last 3 need files)
    config.eval.inpaint_radius = 3    # OpenCV inpaint radius for 'telea' and 'ns'
    config.eval.patchmatch_patch_radius = 3  # PatchMatch patches of (2r+1)^2 pixels
    config.eval.patchmatch_seed = 0   # PatchMatch's random search starts from it, every image
    config.eval.lpips_weights = ""    # LPIPS calibration (vgg.pth); '' = the lpips package's
    config.eval.inception_weights = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
    config.eval.is_splits = 10        # Inception Score: mean over this many splits
    config.eval.checkpoint_step = -1  # -1 = the latest checkpoint
    config.eval.psnr_cap = 100.0      # PSNR (dB) reported for identical images

    # Optimisation, schedule, checkpoints and logs.
    config.train = ml_collections.ConfigDict()
    config.train.learning_rate = 2e-4   # Adam; fine-tuning uses FINETUNE_LEARNING_RATE
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.999
    config.train.num_steps = 1000
    config.train.lr_schedule = "constant"  # after warmup: 'constant' (the paper), 'cosine' to 0 at
                                        # lr_decay_steps, 'step' (x lr_step_factor every
                                        # lr_step_every updates); docs/training.md, Large batches
    config.train.warmup_steps = 0       # linear warmup from 0 over this many updates
    config.train.lr_decay_steps = 0     # 'cosine': the update where it reaches 0; 0 = num_steps
    config.train.lr_step_every = 0      # 'step': updates between decays (>= 1 with 'step')
    config.train.lr_step_factor = 0.1   # 'step': the learning rate's factor at each decay
    config.train.grad_clip_norm = 0.0   # clip the gradients' global norm to this; 0 = off
    config.train.accumulation_steps = 1  # k: each update runs data.batch_size as k micro-batches
    config.train.freeze_encoder_bn = False  # fine-tuning: encoder BN statistics, scale, bias
    config.train.init_from = ""         # workdir whose latest checkpoint initialises the network
    config.train.log_every_steps = 100  # metrics to TensorBoard; the non-finite-loss check
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3   # newest checkpoints kept (>= 1)
    config.train.async_checkpoints = True
    config.train.eval_every_steps = 1000  # L1 / PSNR and image grid of the held-out batch
    config.train.eval_batch_size = 8    # images in that held-out batch (eval.image_size)

    return set_stage(config, arg)


def set_stage(config: ml_collections.ConfigDict, arg: str | config_lib.ConfigArg | None, *,
              finetune_learning_rate: float = FINETUNE_LEARNING_RATE,
              finetune_steps: int | None = None, sizes: tuple[int, ...] = ()
              ) -> ml_collections.ConfigDict:
    """Applies the `:arg` to a finished config: `conv` and the stage; returns it locked.

    Fine-tuning (the paper): `finetune_learning_rate`, the encoder's BatchNorm frozen, the
    network initialised from the train stage's default workdir, `finetune_steps` steps.
    """
    if not isinstance(arg, config_lib.ConfigArg):
        arg = config_lib.parse_config_arg(arg, sizes=sizes)
    if arg.conv:
        config.model.partial = False
        config.experiment += "_conv"
    if arg.stage == "finetune":
        config.stage = "finetune"
        config.train.learning_rate = finetune_learning_rate
        config.train.freeze_encoder_bn = True
        config.train.init_from = config_lib.default_workdir(config.experiment, "train")
        if finetune_steps is not None:
            config.train.num_steps = finetune_steps
    config.lock()
    return config

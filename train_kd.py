"""Knowledge distillation (IKL-KD and baselines): a shim over ``ikl.cli.train_kd``.

python train_kd.py                                   # digits, IKL-KD, CPU, a few minutes
python train_kd.py loss=kd,dkd,ikl -m                # a sweep
torchrun --nproc_per_node=8 train_kd.py experiment=kd_imagenet/ikl_res34_res18
"""

from ikl.cli.train_kd import main, run  # noqa: F401 - run: the plain entry tests call

if __name__ == "__main__":
    main()

"""Adversarial training (IKL-AT, TRADES, or plain CE): a shim over ``ikl.cli.train_at``.

python train_at.py                                   # digits, IKL-AT, CPU, a few minutes
python train_at.py loss=trades dataset=cifar10 model=wrn_34_10
python train_at.py experiment=at_cifar100/ikl_at seed=0
"""

from ikl.cli.train_at import main, run  # noqa: F401 - run: the plain entry tests call

if __name__ == "__main__":
    main()

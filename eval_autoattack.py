"""AutoAttack evaluation of one checkpoint: a shim over ``ikl.cli.eval_autoattack``.

python eval_autoattack.py checkpoint=runs/at_cifar100 dataset=cifar100
python eval_autoattack.py checkpoint=official.pt model=wrn_34_10 dataset=cifar100 evaluations=[autoattack,pgd20,cw20]
"""

from ikl.cli.eval_autoattack import main, run  # noqa: F401 - run: the plain entry tests call

if __name__ == "__main__":
    main()

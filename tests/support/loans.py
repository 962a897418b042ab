"""Generated loans (app.examples.loan.generate) and where they drift."""

from __future__ import annotations

SEED = 3  # generate(seed=3): no unshifted feature crosses its threshold at either size
SMALL, LARGE = 300, 1200
# generate(shift=1) lowers incomes (and so loan amounts) and raises unemployment;
# long_terms offers terms the book never had. The other six inputs keep their distribution.
SHIFTED = {"income", "loan_amount", "employment", "term_months"}

"""What a person sees: figures (:mod:`.figures` for the shared style and saving, :mod:`.quantile_plots`
for a scored pool, :mod:`.run_plots` for runs, :mod:`.seed_plots` for runs under several seeds, both on the one
grid of :mod:`.iteration_grid`), HTML tables (:mod:`.html`) and notebook widgets (:mod:`.widgets`). The tables
they draw come from :mod:`quarklab.analysis`; nothing here computes a result it does not draw."""

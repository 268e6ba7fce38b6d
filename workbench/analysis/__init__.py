"""Reading recordings: turn tables, offline replay, sweeps (local or on Dask), diagnosis and export."""

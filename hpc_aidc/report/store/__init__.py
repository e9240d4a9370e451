"""The accounting store on disk (the edge: files). Layout under the site profile's `report_store`:

    state.json                                   watermark, longest span, jobs awaiting energy (0644)
    jobs/account=<account>/month=<YYYY-MM>/part-<n>.parquet    rows of table.COLUMNS
    rollups/account=<account>/month=<YYYY-MM>/{days,waits,edges,months}-<gen>.parquet    sums by day and
                                                        month, queue waits, edge rows (rollup)
    all/month=<YYYY-MM>/{days,waits,edges,months}-<digest>.parquet    the same for every account (root's)

`jobs/` and `rollups/` are 0711 (nobody lists the accounts); `jobs/account=<a>`, `rollups/account=<a>` and
everything below them belong to root and the site's readers group for the account (`report_store_readers`;
root's group without one), mode 0750/0640: nobody else reads them, whatever path they try. `all/` (every
account's rollups of a month in one file of each kind, named by a digest of the partitions' generations they
sum, so that a report over every account opens a file of each kind a month, not one per account) is root's
alone. Only the ingest writes (as root, under a lock), each file whole (temporary file + rename), so a
reader sees the old or the new file, never half of one; a reader that lists a part the ingest has just
merged away retries once.

Upsert: rows are keyed by table.KEY. A row whose key is stored with the same summary and
state is skipped; one that changed (a summary that arrived late) replaces the stored row; new rows go
to a new part. A partition of more than MAX_PARTS parts merges its newest parts (all but the oldest, or all when the
newest together outgrow the oldest).

Modules: `layout` (names, modes, the state file, which files are current), `writer` (the ingest's
StoreWriter), `listing` (what a reader finds), `table` (the rows' schema, from sacct lines), `rollup`
(daily sums), `inputs` (a report's inputs: the store's files and the live tail), `query` (reports, in DuckDB)."""

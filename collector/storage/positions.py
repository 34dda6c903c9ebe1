"""SQL over MergeTree block numbers, for readers that follow a table in insert order (the
export cursor, the change feed of answers about persons).

A part's name is ``<partition>_<min block>_<max block>_<level>[_<mutation>]`` and a partition
id never holds ``_``. Every row of a part was inserted in a block of that range, and a merge
keeps it (the merged part's range covers its parts'), so a condition on the name's highest
block skips the parts that hold only older rows without reading them: ClickHouse prunes
parts on ``_part`` before reading. Naming the parts instead would miss rows whose part was
merged between two statements.
"""

# The highest block number of the row's part.
PART_TOP_BLOCK = "toUInt64(splitByChar('_', _part)[3])"

"""What MySQL's and MariaDB's function names mean to governance.

A built-in function cannot be shadowed by a stored function called without its database
(the server always calls the built-in), so a name on :data:`BUILTIN_FUNCTIONS` is known
code.  The list holds only names built into **both** MySQL 8 and MariaDB 10.11: a
MariaDB-only built-in (``nvl``, ``decode``...) may be a user's stored function on MySQL,
and the other way round.  Any other name, and every ``db.name(...)``, is code dbsentry
cannot see into.
"""

from __future__ import annotations

__all__ = ["BUILTIN_FUNCTIONS", "FILE_ACCESS_FUNCTIONS", "NOT_CALLS", "SIDE_EFFECT_FUNCTIONS"]

#: Functions that read files on the database server.
FILE_ACCESS_FUNCTIONS = frozenset({"load_file"})

#: Built-ins with effects beyond the statement: locks, sequences, waits on replication,
#: the session's last insert id.
SIDE_EFFECT_FUNCTIONS = frozenset(
    {
        "get_lock",
        "release_lock",
        "release_all_locks",
        "master_pos_wait",
        "source_pos_wait",
        "master_gtid_wait",
        "wait_for_executed_gtid_set",
        "wait_until_sql_thread_after_gtids",
        "last_insert_id",
        "nextval",
        "setval",
        "lastval",
        "benchmark",
    }
)

_BUILTINS = """
abs acos adddate addtime aes_decrypt aes_encrypt ascii asin atan atan2 avg benchmark bin
bit_and bit_count bit_length bit_or bit_xor ceil ceiling char char_length character_length
charset coalesce coercibility collation compress concat concat_ws connection_id conv convert
convert_tz cos cot count crc32 cume_dist curdate current_date current_role current_time
current_timestamp current_user curtime database date date_add date_format date_sub datediff
day dayname dayofmonth dayofweek dayofyear default degrees dense_rank elt exp export_set
extract extractvalue field find_in_set first_value floor format found_rows from_base64
from_days from_unixtime get_format get_lock greatest group_concat hex hour if ifnull inet6_aton
inet6_ntoa inet_aton inet_ntoa insert instr interval is_free_lock is_ipv4 is_ipv4_compat
is_ipv4_mapped is_ipv6 is_used_lock isnull json_array json_array_append json_array_insert
json_arrayagg json_contains json_contains_path json_depth json_extract json_insert json_keys
json_length json_merge json_merge_patch json_merge_preserve json_object json_objectagg
json_quote json_remove json_replace json_search json_set json_type json_unquote json_valid
json_value lag last_day last_insert_id last_value lcase lead least left length ln load_file
localtime localtimestamp locate log log10 log2 lower lpad ltrim make_set makedate maketime
master_pos_wait max md5 microsecond mid min minute mod month monthname name_const now nth_value
ntile nullif oct octet_length ord percent_rank period_add period_diff pi position pow power
quarter quote radians rand rank regexp_instr regexp_replace regexp_substr release_all_locks
release_lock repeat replace reverse right round row_count row_number rpad rtrim schema
sec_to_time second session_user sha sha1 sha2 sign sin sleep soundex space sqrt std stddev
stddev_pop stddev_samp str_to_date strcmp subdate substr substring substring_index subtime sum
sysdate system_user tan time time_format time_to_sec timediff timestamp timestampadd
timestampdiff to_base64 to_days to_seconds trim truncate ucase uncompress uncompressed_length
unhex unix_timestamp updatexml upper user utc_date utc_time utc_timestamp uuid uuid_short
values var_pop var_samp variance version week weekday weekofyear weight_string year yearweek
cast row exists match against
"""

#: Built-in functions of both MySQL 8 and MariaDB 10.11 (lower case).
BUILTIN_FUNCTIONS = frozenset(_BUILTINS.split())

#: Keywords (and type names) that stand before ``(`` without being a function call.
NOT_CALLS = frozenset(
    [
        "IN",
        "VALUES",
        "VALUE",
        "USING",
        "OVER",
        "AS",
        "ON",
        "EXISTS",
        "ANY",
        "SOME",
        "ALL",
        "AND",
        "OR",
        "NOT",
        "XOR",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "SELECT",
        "FROM",
        "JOIN",
        "WHERE",
        "BY",
        "KEY",
        "INDEX",
        "PRIMARY",
        "UNIQUE",
        "FOREIGN",
        "REFERENCES",
        "CHECK",
        "PARTITION",
        "PARTITIONS",
        "SUBPARTITION",
        "LIKE",
        "REGEXP",
        "RLIKE",
        "DIV",
        "MOD",
        "IS",
        "BETWEEN",
        "ROW",
        "TABLE",
        "INTO",
        "SET",
        "LIMIT",
        "OFFSET",
        "DISTINCT",
        "UNION",
        "EXCEPT",
        "INTERSECT",
        "WITH",
        "RECURSIVE",
        "LATERAL",
        "COLUMNS",
        "AGAINST",
        "ESCAPE",
        "WINDOW",
        "ROWS",
        "RANGE",
        "GROUPS",
        "FOR",
        "OF",
        "IGNORE",
        "USE",
        "FORCE",
        "STRAIGHT_JOIN",
        "COLLATE",
        "BINARY",
        "UNSIGNED",
        "SIGNED",
        "VARCHAR",
        "DECIMAL",
        "NUMERIC",
        "INT",
        "INTEGER",
        "TINYINT",
        "SMALLINT",
        "MEDIUMINT",
        "BIGINT",
        "FLOAT",
        "DOUBLE",
        "REAL",
        "BIT",
        "DATETIME",
        "ENUM",
        "TEXT",
        "BLOB",
        "VARBINARY",
        "NCHAR",
        "NVARCHAR",
        "JSON",
        "DEC",
        "FIXED",
        "CHARACTER",
        "NATIONAL",
        "ARRAY",
        "MEMBER",
        "ORDER",
        "HAVING",
        "GROUP",
        "CROSS",
        "NATURAL",
        "INNER",
        "OUTER",
        "UPDATE",
        "DELETE",
        "RETURNING",
        "ELSEIF",
        "END",
        "DUPLICATE",
        "VARYING",
        "TINYTEXT",
        "MEDIUMTEXT",
        "LONGTEXT",
        "TINYBLOB",
        "MEDIUMBLOB",
        "LONGBLOB",
        "GEOMETRY",
        "POINT",
        "DO",
        "CALL",
    ]
)

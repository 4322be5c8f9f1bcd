"""MySQL and MariaDB SQL analysis: the lexer (``lexing``), statement facts (``facts``,
sqlglot's MySQL dialect on an allow-list) and the policy on MySQL text (``verdict``)."""

from dbsentry.engines.mysql.sql.facts import analyze, analyzer
from dbsentry.engines.mysql.sql.lexing import SqlMode, lexer, tokens

__all__ = ["SqlMode", "analyze", "analyzer", "lexer", "tokens"]

"""MySQL/MariaDB statements under the production baseline: the same decisions as the
PostgreSQL corpus where the SQL means the same thing (tests/unit/test_policy_baseline.py).

Each case: the text, and the decision for a person in production (``allow``,
``deny:<rule>``, ``approve:<rule>``; ``refuse`` is ``baseline.unparsable``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dbsentry.engines.mysql.sql.facts import analyze
from dbsentry.engines.mysql.sql.verdict import evaluate_sql, facts_cache
from dbsentry.governance.facts import AnalysisRefused
from dbsentry.identity.model import Identity
from dbsentry.policy import EvalContext, Policy, default_policy, parse_policy

BASE: Policy = default_policy()


def ctx(env: str = "production", agent: bool = False) -> EvalContext:
    return EvalContext(
        identity=Identity(
            "alice@example.com", frozenset(), "agent" if agent else "human", "t1", "token"
        ),
        connection="main",
        environment=env,
        now=datetime(2025, 1, 6, 12, 0, tzinfo=UTC),
    )


def decide(sql: str, policy: Policy = BASE, **kw: object) -> str:
    d = evaluate_sql(policy, sql, ctx(**kw)).decision  # type: ignore[arg-type]
    if d.action == "allow":
        return "allow"
    if "baseline.unparsable" in d.rules:
        return "refuse"
    prefix = {"deny": "deny", "require_approval": "approve"}.get(d.action, d.action)
    return f"{prefix}:{d.rules[0]}"


UNBOUNDED = "deny:baseline.prod.unbounded-write"
DROP = "deny:baseline.prod.drop"

HUMAN_PRODUCTION: list[tuple[str, str]] = [
    # -- reads
    ("SELECT * FROM t WHERE id = 1", "allow"),
    ("select id, name from app.users where email = 'a@b.c'", "allow"),
    ("SELECT 1", "allow"),
    ("SELECT 1 FROM dual", "allow"),
    ("SELECT NOW(), VERSION(), DATABASE(), USER()", "allow"),
    ("SELECT COUNT(*) FROM orders GROUP BY customer_id HAVING COUNT(*) > 2", "allow"),
    ("SELECT * FROM t1 JOIN t2 ON t1.a = t2.a LEFT JOIN t3 USING (b)", "allow"),
    ("SELECT * FROM t1 STRAIGHT_JOIN t2 ON t1.a = t2.a", "allow"),
    ("SELECT * FROM t1 NATURAL JOIN t2", "allow"),
    ("SELECT * FROM (SELECT a FROM t) AS d WHERE d.a > 1", "allow"),
    ("WITH c AS (SELECT a FROM t) SELECT * FROM c", "allow"),
    (
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        "allow",
    ),
    ("SELECT a FROM t UNION SELECT a FROM u", "allow"),
    ("(SELECT a FROM t) UNION (SELECT a FROM u) ORDER BY a LIMIT 5", "allow"),
    ("SELECT * FROM t WHERE a IN (SELECT a FROM u)", "allow"),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = t.a)", "allow"),
    ("SELECT a, ROW_NUMBER() OVER (PARTITION BY b ORDER BY c) FROM t", "allow"),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 10", "allow"),
    ("SELECT * FROM t LIMIT 10 OFFSET 20", "allow"),
    ("SELECT * FROM t LIMIT 20, 10", "allow"),
    ("SELECT `select`, `a``b` FROM `my table`", "allow"),
    (
        "SELECT 'it''s', \"dq\", 'a\\'b', N'nat', _utf8mb4'x', x'41', b'01', 0x41, 0b01 FROM t",
        "allow",
    ),
    ("SELECT a->>'$.name', JSON_EXTRACT(doc, '$.x') FROM t", "allow"),
    ("SELECT CAST(a AS CHAR(10)), CONVERT(b, SIGNED) FROM t", "allow"),
    ("SELECT IF(a > 1, 'x', 'y'), IFNULL(b, 0), COALESCE(c, d) FROM t", "allow"),
    ("SELECT CASE WHEN a = 1 THEN 'one' ELSE 'other' END FROM t", "allow"),
    ("SELECT DATE_FORMAT(created, '%Y-%m'), DATE_ADD(created, INTERVAL 1 DAY) FROM t", "allow"),
    ("SELECT GROUP_CONCAT(name ORDER BY name SEPARATOR ',') FROM t", "allow"),
    ("SELECT * FROM t WHERE name LIKE 'a%' ESCAPE '!'", "allow"),
    ("SELECT * FROM t WHERE name REGEXP '^a'", "allow"),
    ("SELECT * FROM t WHERE a BETWEEN 1 AND 5 AND b IS NOT NULL", "allow"),
    ("SELECT * FROM t WHERE a <=> NULL", "allow"),
    ("SELECT @a := 1", "allow"),
    ("SELECT @@version, @@session.sql_mode", "allow"),
    ("SELECT a INTO @x FROM t WHERE id = 1", "allow"),
    ("SELECT * FROM t FOR UPDATE", "allow"),
    ("SELECT * FROM t LOCK IN SHARE MODE", "allow"),
    ("SELECT * FROM t USE INDEX (i) WHERE a = 1", "allow"),
    ("SELECT SLEEP(1)", "allow"),
    ("SELECT * FROM information_schema.tables WHERE table_schema = 'test'", "allow"),
    ("SELECT 1 -- comment", "allow"),
    ("SELECT 1 # comment", "allow"),
    ("SELECT /* comment */ 1", "allow"),
    ("SELECT 1;", "allow"),
    ("SELECT 1; SELECT 2", "allow"),
    ("SELECT my_function(1)", "allow"),  # allowed for people (the row guard limits effect)
    ("DO 1", "allow"),
    ("DO SLEEP(0)", "allow"),
    # -- writes with a real WHERE
    ("INSERT INTO t (a, b) VALUES (1, 2), (3, 4)", "allow"),
    ("INSERT INTO t VALUES (1)", "allow"),
    ("INSERT t (a) VALUES (1)", "allow"),
    ("INSERT INTO t SET a = 1, b = 2", "allow"),
    ("INSERT IGNORE INTO t (a) VALUES (1)", "allow"),
    ("INSERT INTO t (a) SELECT a FROM u WHERE b = 1", "allow"),
    ("INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a) + 1", "allow"),
    ("REPLACE INTO t (a) VALUES (1)", "allow"),
    ("UPDATE t SET a = 1 WHERE id = 5", "allow"),
    ("UPDATE t SET a = a + 1 WHERE id IN (1, 2, 3) ORDER BY id LIMIT 3", "allow"),
    ("UPDATE LOW_PRIORITY IGNORE t SET a = 1 WHERE id = 5", "allow"),
    ("UPDATE t1 JOIN t2 ON t1.a = t2.a SET t1.x = t2.y WHERE t2.z = 3", "allow"),
    ("UPDATE t1, t2 SET t1.a = t2.a WHERE t1.id = t2.id", "allow"),
    ("DELETE FROM t WHERE id = 5", "allow"),
    ("DELETE FROM t WHERE id = 5 LIMIT 1", "allow"),
    ("DELETE LOW_PRIORITY QUICK IGNORE FROM t WHERE id = 5", "allow"),
    ("DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a WHERE t2.b = 3", "allow"),
    ("DELETE t1, t2 FROM t1 JOIN t2 ON t1.a = t2.a WHERE t1.id = 7", "allow"),
    ("DELETE FROM t1 USING t1 JOIN t2 ON t1.a = t2.a WHERE t2.b = 3", "allow"),
    ("DELETE FROM t WHERE id = 5 OR id = 6", "allow"),
    ("DELETE FROM t WHERE id > -1", "allow"),  # not provable: the row guard's business
    ("DELETE FROM t WHERE name LIKE 'a%'", "allow"),
    ("DELETE FROM t WHERE 1 = 0", "allow"),
    ("DELETE FROM t WHERE 'a' = 'b'", "allow"),
    ("DELETE FROM t WHERE id = id + 1", "allow"),
    # -- unbounded writes
    ("DELETE FROM t", UNBOUNDED),
    ("delete from t;", UNBOUNDED),
    ("UPDATE t SET a = 1", UNBOUNDED),
    ("DELETE FROM t WHERE 1=1", UNBOUNDED),
    ("DELETE FROM t WHERE 1", UNBOUNDED),
    ("DELETE FROM t WHERE TRUE", UNBOUNDED),
    ("DELETE FROM t WHERE id=id", UNBOUNDED),
    ("DELETE FROM t WHERE id <=> id", UNBOUNDED),
    ("DELETE FROM t WHERE t.id = t.id", UNBOUNDED),
    ("DELETE FROM t WHERE id >= id", UNBOUNDED),
    ("DELETE FROM t WHERE id IN (id)", UNBOUNDED),
    ("DELETE FROM t WHERE name LIKE '%'", UNBOUNDED),
    ("DELETE FROM t WHERE true OR x", UNBOUNDED),
    ("DELETE FROM t WHERE x = 1 OR 1", UNBOUNDED),
    ("DELETE FROM t WHERE id = 5 || 1", UNBOUNDED),
    ("DELETE FROM t WHERE id IS NOT NULL OR TRUE", UNBOUNDED),
    ("DELETE FROM t WHERE NOT 0", UNBOUNDED),
    ("DELETE FROM t WHERE !0", UNBOUNDED),
    ("DELETE FROM t WHERE NOT FALSE", UNBOUNDED),
    ("DELETE FROM t WHERE 1 <> 2", UNBOUNDED),
    ("DELETE FROM t WHERE 2 > 1", UNBOUNDED),
    ("DELETE FROM t WHERE -1", UNBOUNDED),
    ("DELETE FROM t WHERE 0.5", UNBOUNDED),
    ("DELETE FROM t WHERE '1'", UNBOUNDED),
    ("DELETE FROM t WHERE '1abc'", UNBOUNDED),
    ("DELETE FROM t WHERE 'abc' = 0", UNBOUNDED),
    ("DELETE FROM t WHERE '1' = 1", UNBOUNDED),
    ("DELETE FROM t WHERE 'a' = 'a'", UNBOUNDED),
    ("DELETE FROM t WHERE 'a' = 'A'", UNBOUNDED),
    ("DELETE FROM t WHERE 'a ' = 'a'", UNBOUNDED),
    ("DELETE FROM t WHERE x'41' = 'A'", UNBOUNDED),
    ("DELETE FROM t WHERE 0x41 = 65", UNBOUNDED),
    ("DELETE FROM t WHERE b'1' = 1", UNBOUNDED),
    ("DELETE FROM t WHERE 1 IN (1, 2)", UNBOUNDED),
    ("DELETE FROM t WHERE 1 BETWEEN 0 AND 2", UNBOUNDED),
    ("DELETE FROM t WHERE 1 IS NOT NULL", UNBOUNDED),
    ("DELETE FROM t WHERE NULL IS NULL", UNBOUNDED),
    ("DELETE FROM t WHERE 1 IS TRUE", UNBOUNDED),
    ("DELETE FROM t WHERE TRUE XOR FALSE", UNBOUNDED),
    ("DELETE FROM t WHERE 1 = 1 AND 2 = 2", UNBOUNDED),
    ("DELETE FROM t WHERE (1 = 1)", UNBOUNDED),
    ("DELETE FROM t WHERE 1 + 1 = 2", UNBOUNDED),
    ("DELETE FROM t WHERE 1/3 = 0.3333", UNBOUNDED),
    ("DELETE FROM t WHERE 0.1 + 0.2 = 0.3", UNBOUNDED),
    ("DELETE FROM t WHERE ~0", UNBOUNDED),
    ("DELETE FROM t WHERE IF(1, 1, 0)", UNBOUNDED),
    ("DELETE FROM t WHERE CASE WHEN 1 THEN 1 END", UNBOUNDED),
    ("DELETE FROM t WHERE COALESCE(NULL, 1)", UNBOUNDED),
    ("DELETE FROM t WHERE IFNULL(NULL, 1)", UNBOUNDED),
    ("DELETE FROM t WHERE EXISTS (SELECT 1)", UNBOUNDED),
    ("DELETE FROM t WHERE (SELECT 1)", UNBOUNDED),
    ("DELETE FROM t WHERE 'abc' LIKE '%'", UNBOUNDED),
    ("DELETE FROM t WHERE 'ABC' LIKE 'a%'", UNBOUNDED),
    ("DELETE FROM t WHERE CAST(1 AS CHAR)", UNBOUNDED),
    ("DELETE FROM t WHERE 1 LIMIT 10", UNBOUNDED),
    ("DELETE FROM t ORDER BY id LIMIT 10", UNBOUNDED),
    ("UPDATE t SET a = 1 ORDER BY id LIMIT 1", UNBOUNDED),
    ("UPDATE t SET a = 1 WHERE 1 = 1 LIMIT 1", UNBOUNDED),
    ("DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a", UNBOUNDED),
    ("DELETE t1, t2 FROM t1 JOIN t2 ON t1.a = t2.a WHERE 1", UNBOUNDED),
    ("DELETE FROM t1, t2 USING t1 JOIN t2 ON t1.a = t2.a", UNBOUNDED),
    ("DELETE FROM t1 USING t1 JOIN t2 ON t1.a = t2.a WHERE 1 = 1", UNBOUNDED),
    ("UPDATE t1 JOIN t2 ON t1.a = t2.a SET t1.x = 1", UNBOUNDED),
    ("UPDATE t1, t2 SET t1.a = 1", UNBOUNDED),
    ("DELETE FROM t WHERE id = 5; DELETE FROM t", UNBOUNDED),
    ("DELETE/**/FROM t", UNBOUNDED),
    ("DELETE FROM t -- WHERE id = 5", UNBOUNDED),
    ("DELETE FROM t # WHERE id = 5", UNBOUNDED),
    ("DELETE FROM t /* WHERE id = 5 */", UNBOUNDED),
    ("PREPARE s FROM 'DELETE FROM t'", UNBOUNDED),
    ("EXPLAIN ANALYZE DELETE FROM t", UNBOUNDED),
    # -- DDL, drops and truncates
    ("DROP TABLE t", DROP),
    ("DROP TABLE IF EXISTS a, b", DROP),
    ("DROP TEMPORARY TABLE t", DROP),
    ("drop database app", DROP),
    ("DROP VIEW v", DROP),
    ("DROP INDEX i ON t", DROP),
    ("ALTER TABLE t DROP COLUMN ssn", DROP),
    ("ALTER TABLE t DROP INDEX i", DROP),
    ("ALTER TABLE t RENAME TO t2", DROP),
    ("RENAME TABLE a TO b", DROP),
    ("RENAME TABLE a TO b, c TO d", DROP),
    # MariaDB's CREATE OR REPLACE drops what is there first, rows and all
    ("CREATE OR REPLACE TABLE t (id INT)", DROP),
    ("CREATE OR REPLACE TABLE t AS SELECT 1 AS id", DROP),
    ("create or replace database app", DROP),
    ("CREATE OR REPLACE SCHEMA app", "refuse"),
    ("CREATE OR REPLACE TEMPORARY TABLE tt (a INT)", "allow"),  # the session's own
    ("CREATE OR REPLACE VIEW v AS SELECT a FROM t", "approve:baseline.prod.ddl-approval"),
    ("TRUNCATE t", "deny:baseline.prod.truncate"),
    ("TRUNCATE TABLE app.t", "deny:baseline.prod.truncate"),
    ("SELECT 1; DROP TABLE t", DROP),
    ("SELECT 1 -- ' \n; DROP TABLE t", DROP),
    ("SELECT 1 # '\n; DROP TABLE t", DROP),
    ("SELECT '--'; DROP TABLE t", DROP),
    ("SELECT 'a\\'; DROP TABLE t; -- '", "allow"),  # one string: the backslash escapes the quote
    (
        "CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, a VARCHAR(10) NOT NULL DEFAULT 'x')",
        "approve:baseline.prod.ddl-approval",
    ),
    ("CREATE TABLE t2 AS SELECT * FROM t", "approve:baseline.prod.ddl-approval"),
    ("CREATE TABLE t3 LIKE t", "approve:baseline.prod.ddl-approval"),
    ("CREATE VIEW v AS SELECT a FROM t", "approve:baseline.prod.ddl-approval"),
    ("CREATE INDEX i ON t (a)", "approve:baseline.prod.ddl-approval"),
    ("CREATE DATABASE d", "approve:baseline.prod.ddl-approval"),
    ("ALTER TABLE t ADD COLUMN b INT", "approve:baseline.prod.ddl-approval"),
    ("ALTER TABLE t MODIFY a BIGINT", "approve:baseline.prod.ddl-approval"),
    ("CREATE TEMPORARY TABLE tt (a INT)", "allow"),
    (
        'CREATE TABLE s (a INT) ENGINE=SPIDER COMMENT=\'wrapper "mysql", host "h"\'',
        "deny:baseline.prod.remote-connection",
    ),
    ("CREATE TABLE f (a INT) ENGINE=FEDERATED CONNECTION='mysql://u:p@h/db/t'", "refuse"),
    ("CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (HOST 'h')", "refuse"),
    ("CREATE TABLE t (a INT DEFAULT (my_func()))", "approve:baseline.prod.ddl-approval"),
    ("SELECT a FROM t GROUP BY a WITH ROLLUP", "allow"),
    ("SELECT JSON_OBJECT('a', 1), JSON_ARRAYAGG(a) FROM t", "allow"),
    # -- files, plugins, server settings, dynamic SQL
    ("SELECT LOAD_FILE('/etc/passwd')", "deny:baseline.prod.file-access"),
    ("SELECT load_file(0x2f6574632f706173737764)", "deny:baseline.prod.file-access"),
    (
        "SELECT `load_file`('/etc/passwd')",
        "deny:baseline.prod.file-access",
    ),  # quoted: still the built-in
    ("SELECT LOAD_FILE /* x */ ('/etc/passwd')", "deny:baseline.prod.file-access"),
    ("SET @a = LOAD_FILE('/etc/passwd')", "deny:baseline.prod.file-access"),
    ("INSERT INTO t VALUES (LOAD_FILE('/etc/passwd'))", "deny:baseline.prod.file-access"),
    ("PREPARE s FROM 'SELECT LOAD_FILE(''/etc/passwd'')'", "deny:baseline.prod.file-access"),
    ("DELETE FROM t WHERE id = 5 < 10", "refuse"),  # MySQL: (id = 5) < 10, true for every row
    ("DELETE FROM t WHERE a = b = c < 2", "refuse"),
    ("WITH x AS (SELECT 1) DELETE FROM t", "refuse"),
    # a WHERE that names no column of the target is the same for every one of its rows
    ("DELETE t1 FROM t1 JOIN t2 ON 1 = 1 WHERE t2.x = 1", UNBOUNDED),
    ("DELETE FROM t1 USING t1, t2 WHERE t2.b = 3", UNBOUNDED),
    ("UPDATE t1 JOIN t2 ON t2.a = 1 SET t1.x = 1 WHERE t2.b = 2", UNBOUNDED),
    ("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u)", UNBOUNDED),
    ("DELETE FROM t WHERE (SELECT COUNT(*) FROM u) > 0", UNBOUNDED),
    ("DELETE FROM t WHERE @x", UNBOUNDED),
    ("DELETE FROM t WHERE id = 5 OR @x", UNBOUNDED),
    ("DELETE FROM t WHERE id = 5 AND @x", "allow"),
    ("DELETE FROM t WHERE ? = ?", UNBOUNDED),
    ("DELETE FROM t WHERE id = ?", "allow"),
    ("DELETE FROM t WHERE my_func()", UNBOUNDED),
    ("DELETE FROM t WHERE NOW() > '2000-01-01'", UNBOUNDED),
    ("DELETE FROM t WHERE 1 & 1", UNBOUNDED),
    ("DELETE FROM t WHERE @a := 1", "refuse"),
    # MariaDB's EXECUTE IMMEDIATE: the text is analysed, or it is dynamic SQL
    ("EXECUTE IMMEDIATE 'DROP TABLE t'", DROP),
    ("EXECUTE IMMEDIATE 'SELECT 1'", "allow"),
    ("EXECUTE IMMEDIATE @q", "deny:baseline.prod.dynamic-sql"),
    ("EXECUTE IMMEDIATE CONCAT('DROP', ' TABLE t')", "deny:baseline.prod.dynamic-sql"),
    ("PREPARE s FROM 'SELECT 1' 'DROP TABLE t'", "deny:baseline.prod.dynamic-sql"),
    ("PREPARE s FROM 'SELECT 1; DROP TABLE t'", "refuse"),
    ("PREPARE s FROM 'DELETE FROM t WHERE 1 /*!=0*/'", "refuse"),
    ("INSERT INTO t SELECT 1 INTO OUTFILE '/tmp/x'", "refuse"),
    ("SELECT (SELECT a FROM t INTO OUTFILE '/tmp/y')", "deny:baseline.prod.copy-server-file"),
    (
        "SELECT a FROM t UNION SELECT a FROM u INTO OUTFILE '/tmp/x'",
        "deny:baseline.prod.copy-server-file",
    ),
    ("ANALYZE DELETE FROM t", UNBOUNDED),  # MariaDB: runs the statement
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", "deny:baseline.prod.copy-server-file"),
    (
        "SELECT * INTO OUTFILE '/tmp/x' FIELDS TERMINATED BY ',' ENCLOSED BY '\"' LINES TERMINATED BY '\\n' FROM t",
        "deny:baseline.prod.copy-server-file",
    ),
    ("SELECT a FROM t INTO DUMPFILE '/tmp/x'", "deny:baseline.prod.copy-server-file"),
    ("LOAD DATA INFILE '/tmp/x' INTO TABLE t", "deny:baseline.prod.copy-server-file"),
    ("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t", "deny:baseline.local-infile"),
    (
        "LOAD DATA LOW_PRIORITY LOCAL INFILE 'x' REPLACE INTO TABLE t FIELDS TERMINATED BY ','",
        "deny:baseline.local-infile",
    ),
    ("LOAD XML LOCAL INFILE 'x.xml' INTO TABLE t", "deny:baseline.local-infile"),
    ("INSTALL PLUGIN x SONAME 'x.so'", "deny:baseline.prod.load"),
    ("INSTALL COMPONENT 'file://component_x'", "deny:baseline.prod.load"),
    ("UNINSTALL PLUGIN x", "deny:baseline.prod.drop"),
    ("SET GLOBAL general_log = 1", "deny:baseline.prod.alter-system"),
    ("SET @@global.general_log = 1", "deny:baseline.prod.alter-system"),
    ("SET PERSIST max_connections = 10", "deny:baseline.prod.alter-system"),
    ("SET PERSIST_ONLY max_connections = 10", "deny:baseline.prod.alter-system"),
    ("SET @@persist.max_connections = 10", "deny:baseline.prod.alter-system"),
    ("SET autocommit = 0, GLOBAL read_only = 0", "deny:baseline.prod.alter-system"),
    ("SET GLOBAL TRANSACTION READ WRITE", "deny:baseline.prod.alter-system"),
    ("PREPARE s FROM @q", "deny:baseline.prod.dynamic-sql"),
    ("SET sql_log_bin = 0", "deny:baseline.prod.settings"),
    ("SET foreign_key_checks = 0", "deny:baseline.prod.settings"),
    ("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'", "deny:baseline.prod.settings"),
    ("SET ROLE r", "deny:baseline.prod.role-switch"),
    # -- settings and transactions on the allow-list
    ("SET autocommit = 0", "allow"),
    ("SET NAMES utf8mb4", "allow"),
    ("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci", "allow"),
    ("SET CHARACTER SET utf8mb4", "allow"),
    ("SET time_zone = '+00:00'", "allow"),
    ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", "allow"),
    ("SET @a = 1, @b = 'x'", "allow"),
    ("SET @a = (SELECT max(id) FROM t)", "allow"),
    ("SET max_execution_time = 1000", "allow"),
    ("BEGIN", "allow"),
    ("BEGIN WORK", "allow"),
    ("START TRANSACTION", "allow"),
    ("START TRANSACTION READ ONLY", "allow"),
    ("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ WRITE", "allow"),
    ("COMMIT", "allow"),
    ("COMMIT WORK AND NO CHAIN NO RELEASE", "allow"),
    ("ROLLBACK", "allow"),
    ("SAVEPOINT s1", "allow"),
    ("ROLLBACK TO SAVEPOINT s1", "allow"),
    ("ROLLBACK WORK TO s1", "allow"),
    ("RELEASE SAVEPOINT s1", "allow"),
    ("SHOW TABLES", "allow"),
    ("SHOW VARIABLES LIKE 'sql_mode'", "allow"),
    ("SHOW CREATE TABLE t", "allow"),
    ("SHOW FULL PROCESSLIST", "allow"),
    ("DESCRIBE t", "allow"),
    ("DESC app.t", "allow"),
    ("EXPLAIN SELECT * FROM t WHERE a = 1", "allow"),
    ("EXPLAIN FORMAT=JSON SELECT * FROM t", "allow"),
    ("EXPLAIN DELETE FROM t", "allow"),  # EXPLAIN does not run it
    ("EXPLAIN ANALYZE SELECT * FROM t", "allow"),
    ("PREPARE s FROM 'SELECT * FROM t WHERE id = ?'", "allow"),
    ("EXECUTE s USING @a", "allow"),
    ("EXECUTE s", "allow"),
    ("DEALLOCATE PREPARE s", "allow"),
    ("DROP PREPARE s", "allow"),
    ("HANDLER t OPEN", "allow"),
    ("HANDLER t READ FIRST", "allow"),
    ("HANDLER t READ `PRIMARY` = (5)", "allow"),
    ("HANDLER t CLOSE", "allow"),
    ("LOCK TABLES t READ", "allow"),
    ("UNLOCK TABLES", "allow"),
    ("ANALYZE TABLE t", "allow"),
    # -- roles, accounts, server administration
    ("GRANT SELECT ON app.* TO 'u'@'%'", "approve:baseline.prod.role-approval"),
    ("REVOKE ALL PRIVILEGES ON *.* FROM u", "approve:baseline.prod.role-approval"),
    ("CREATE USER 'u'@'%' IDENTIFIED BY 'secret'", "approve:baseline.prod.role-approval"),
    ("ALTER USER u IDENTIFIED BY 'x'", "approve:baseline.prod.role-approval"),
    ("DROP USER u", "deny:baseline.prod.drop"),
    ("RENAME USER a TO b", "approve:baseline.prod.role-approval"),
    ("CREATE ROLE r", "approve:baseline.prod.role-approval"),
    ("SET PASSWORD FOR u = 'x'", "approve:baseline.prod.role-approval"),
    ("SHUTDOWN", "approve:baseline.prod.disruptive-maintenance"),
    ("RESTART", "approve:baseline.prod.disruptive-maintenance"),
    ("KILL 42", "approve:baseline.prod.disruptive-maintenance"),
    ("KILL QUERY 42", "approve:baseline.prod.disruptive-maintenance"),
    ("LOCK TABLES t WRITE", "approve:baseline.prod.disruptive-maintenance"),
    ("INSERT INTO mysql.user (user) VALUES ('x')", "deny:baseline.prod.catalog-write"),
    (
        "UPDATE mysql.user SET authentication_string = '' WHERE user = 'root'",
        "deny:baseline.prod.catalog-write",
    ),
    (
        "DELETE FROM performance_schema.setup_consumers WHERE name = 'x'",
        "deny:baseline.prod.catalog-write",
    ),
    # -- refused everywhere: lexical traps, client commands, what is not analysed
    ("/*!DROP TABLE t*/", "refuse"),
    ("SELECT 1 /*! , SLEEP(10) */", "refuse"),
    ("SELECT 1 /*!50000 UNION SELECT password FROM mysql.user */", "refuse"),
    ("SELECT 1 /*M! ; DROP TABLE t */", "refuse"),
    ("SELECT /*+ SET_VAR(foreign_key_checks=0) */ 1", "refuse"),
    ("DR/**/OP TABLE t", "refuse"),
    ("SELECT 1--1", "refuse"),
    ("DELETE FROM t WHERE id=1--1", "refuse"),
    ("DELIMITER //", "refuse"),
    ("SELECT 1\\G", "refuse"),
    ("SELECT 1 \\g", "refuse"),
    ("SELECT 'unterminated", "refuse"),
    ("SELECT 1 /* unterminated", "refuse"),
    ("SELECT `unterminated", "refuse"),
    ("SELECT 123abc FROM t", "refuse"),
    ("SELECT 1\u00a0FROM t", "refuse"),
    ("SET NAMES gbk", "refuse"),
    ("SET CHARACTER SET big5", "refuse"),
    ("SET character_set_client = sjis", "refuse"),
    ("SHUTDOWN NOW", "refuse"),
    ("SHOW TABLES WHERE my_func()", "refuse"),
    ("FLUSH PRIVILEGES", "refuse"),
    ("BINLOG 'abc'", "refuse"),
    ("XA START 'x'", "refuse"),
    ("CREATE PROCEDURE p() BEGIN DELETE FROM t; END", "refuse"),
    ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1", "refuse"),
    ("BEGIN NOT ATOMIC DELETE FROM t; END", "refuse"),
    ("SHUTDOWN", "approve:baseline.prod.disruptive-maintenance"),
    ("a_bare_word", "refuse"),
    ("1 + 1", "refuse"),
    ("SELECT * FROM JSON_TABLE('[1]', '$[*]' COLUMNS (a INT PATH '$')) AS j", "refuse"),
    ("LOAD DATA INFILE 'x' INTO TABLE t SET a = my_func()", "refuse"),
    ("HANDLER t READ FIRST WHERE my_func()", "refuse"),
]


@pytest.mark.parametrize(("sql", "expected"), HUMAN_PRODUCTION)
def test_human_in_production(sql: str, expected: str) -> None:
    assert decide(sql) == expected


def test_corpus_size() -> None:
    assert len(HUMAN_PRODUCTION) >= 150


AGENT_PRODUCTION: list[tuple[str, str]] = [
    ("SELECT * FROM t WHERE id = 1", "allow"),
    ("SELECT COUNT(*) FROM t", "allow"),
    ("SHOW TABLES", "allow"),
    ("EXPLAIN SELECT * FROM t", "allow"),
    ("BEGIN", "allow"),
    ("START TRANSACTION READ ONLY", "allow"),
    ("START TRANSACTION READ WRITE", "deny:baseline.prod.agent-read-write"),
    ("SET SESSION TRANSACTION READ WRITE", "deny:baseline.prod.agent-read-write"),
    ("SET transaction_read_only = 0", "deny:baseline.prod.agent-read-write"),
    ("SET tx_read_only = OFF", "deny:baseline.prod.agent-read-write"),
    ("INSERT INTO t VALUES (1)", "deny:baseline.prod.agent-read-only"),
    ("UPDATE t SET a = 1 WHERE id = 1", "deny:baseline.prod.agent-read-only"),
    ("DELETE FROM t WHERE id = 1", "deny:baseline.prod.agent-read-only"),
    ("REPLACE INTO t VALUES (1)", "deny:baseline.prod.agent-read-only"),
    ("CREATE TEMPORARY TABLE tt (a INT)", "deny:baseline.prod.agent-read-only"),
    ("CALL p(1)", "deny:baseline.prod.agent-read-only"),
    ("SELECT my_function(1)", "deny:baseline.prod.agent-side-effects"),
    ("SELECT app.my_function(1)", "deny:baseline.prod.agent-side-effects"),
    ("SELECT to_char(1)", "deny:baseline.prod.agent-side-effects"),  # a built-in of other dialects
    ("SELECT nvl(a, 1) FROM t", "deny:baseline.prod.agent-side-effects"),  # MariaDB-only built-in
    ("SELECT `count`(*) FROM t", "deny:baseline.prod.agent-side-effects"),
    ("SELECT * FROM t WHERE a = my_function(1)", "deny:baseline.prod.agent-side-effects"),
    ("DO my_function(1)", "deny:baseline.prod.agent-side-effects"),
    ("SET @a = my_function(1)", "deny:baseline.prod.agent-side-effects"),
    ("SELECT GET_LOCK('x', 1)", "deny:baseline.prod.agent-side-effects"),
    ("SELECT * FROM t FOR UPDATE", "deny:baseline.prod.agent-side-effects"),
    ("LOCK TABLES t READ", "deny:baseline.prod.agent-side-effects"),
    ("EXPLAIN SELECT my_function(1)", "deny:baseline.prod.agent-side-effects"),
    ("ANALYZE TABLE t", "deny:baseline.prod.agent-maintenance"),
    ("KILL 5", "deny:baseline.prod.agent-side-effects"),
]


@pytest.mark.parametrize(("sql", "expected"), AGENT_PRODUCTION)
def test_agent_in_production(sql: str, expected: str) -> None:
    assert decide(sql, agent=True) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DROP TABLE t", "allow"),
        ("DELETE FROM t", "allow"),
        ("SET GLOBAL general_log = 1", "allow"),
        ("GRANT ALL ON *.* TO u", "allow"),
        ("LOAD DATA INFILE '/tmp/x' INTO TABLE t", "allow"),
        ("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t", "deny:baseline.local-infile"),
        ("INSERT INTO mysql.user (user) VALUES ('x')", "approve:baseline.catalog-write"),
        ("/*!DROP TABLE t*/", "refuse"),
    ],
)
def test_outside_production(sql: str, expected: str) -> None:
    assert decide(sql, env="staging") == expected


def test_local_infile_allowed_when_the_policy_disables_its_rule() -> None:
    policy = parse_policy("version: 1\nbaseline:\n  disable: [baseline.local-infile]\n")
    assert decide("LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t", policy, env="staging") == "allow"
    assert decide("LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t", policy) == "allow"


def test_statements_too_long_for_the_parser_are_refused_as_too_complex() -> None:
    sql = "INSERT INTO t (a) VALUES " + ",".join(f"({i})" for i in range(100_000))
    with pytest.raises(AnalysisRefused) as err:
        analyze(sql)
    assert err.value.sqlstate == "54001"


def test_fingerprints_ignore_constants_layout_and_comments() -> None:
    (a,) = analyze("SELECT * FROM t WHERE id = 1 AND name = 'x'")
    (b,) = analyze("select *  from t /* c */ where id = 42 and name = 'y';")
    (c,) = analyze("SELECT * FROM t WHERE id = 1 OR name = 'x'")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 16


def test_facts_cache_and_refusal_types() -> None:
    cache = facts_cache()
    first = cache.analyze("SELECT 1")
    assert cache.analyze("SELECT 1") is first
    with pytest.raises(AnalysisRefused) as err:
        analyze("/*!DROP TABLE t*/")
    assert err.value.sqlstate == "0A000"
    with pytest.raises(AnalysisRefused) as err:
        analyze("SELECT 'x")
    assert err.value.sqlstate == "42601"

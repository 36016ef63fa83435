using System.Text.RegularExpressions;
using Npgsql;

namespace HighlanderPG.Fencing;

/// <summary>
/// The fencing table and guard function, in a configurable schema. Created on first use by the lock session when
/// fencing is on; the same DDL is in the README for a DBA to run ahead.
/// </summary>
internal static partial class FencingSql
{
    /// <summary>The SQLSTATE raised by <c>assert_epoch</c> for a stale epoch.</summary>
    public const string StaleEpochSqlState = "HL001";

    [GeneratedRegex("^[a-z_][a-z0-9_]{0,53}$")]
    private static partial Regex SchemaPattern();

    /// <summary>What a schema name must be, for messages: "must be ..." followed by this.</summary>
    public const string SchemaRule = "a lowercase SQL identifier: letters, digits and underscores, not starting with a digit, at most 54 characters (its step-down and messaging channels add up to 9 to PostgreSQL's 63), not starting with pg_ (reserved for the system) and not a reserved SQL word";

    /// <summary>
    /// Whether <paramref name="schema"/> can be put into SQL unquoted as a schema name, and into a channel name: see
    /// <see cref="SchemaRule"/>.
    /// </summary>
    public static bool IsValidSchema(string? schema) =>
        schema is not null && SchemaPattern().IsMatch(schema) && !schema.StartsWith("pg_", StringComparison.Ordinal) && !ReservedWords.Contains(schema);

    /// <summary>
    /// PostgreSQL's keywords that cannot name a schema unquoted: its reserved ones and those reserved but allowed as a
    /// function or type name (https://www.postgresql.org/docs/current/sql-keywords-appendix.html).
    /// </summary>
    private static readonly HashSet<string> ReservedWords = new(StringComparer.Ordinal)
    {
        "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "binary", "both",
        "case", "cast", "check", "collate", "collation", "column", "concurrently", "constraint", "create", "cross",
        "current_catalog", "current_date", "current_role", "current_schema", "current_time", "current_timestamp",
        "current_user", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "false", "fetch",
        "for", "foreign", "freeze", "from", "full", "grant", "group", "having", "ilike", "in", "initially", "inner",
        "intersect", "into", "is", "isnull", "join", "lateral", "leading", "left", "like", "limit", "localtime",
        "localtimestamp", "natural", "not", "notnull", "null", "offset", "on", "only", "or", "order", "outer",
        "overlaps", "placing", "primary", "references", "returning", "right", "select", "session_user", "similar",
        "some", "symmetric", "system_user", "table", "tablesample", "then", "to", "trailing", "true", "union", "unique",
        "user", "using", "variadic", "verbose", "when", "where", "window", "with",
    };

    /// <summary>
    /// The version of the guard function, kept in its comment: a node upgrades objects of an older version (or without
    /// one) on first use. Version 2 added <c>holder_started</c> and <c>lease_ms</c>, the holder-session check and the
    /// transaction-local <c>idle_in_transaction_session_timeout</c>.
    /// </summary>
    public const string GuardVersion = "highlander fencing guard v2";

    /// <summary>
    /// The DDL (idempotent; upgrades a table and function of the first version in place). The schema name is validated
    /// (lowercase identifier) before it is put into SQL. See docs/lease-protocol.md, "Fencing".
    /// </summary>
    public static string Ddl(string schema)
    {
        EnsureValid(schema);
        return $$"""
            CREATE SCHEMA IF NOT EXISTS {{schema}};
            CREATE TABLE IF NOT EXISTS {{schema}}.leases (
                key            bigint      PRIMARY KEY,
                namespace      text        NOT NULL,
                name           text        NOT NULL,
                epoch          bigint      NOT NULL CHECK (epoch > 0),
                node_id        text        NOT NULL,
                endpoint       text,
                host           text,
                holder_pid     integer     NOT NULL,
                acquired_at    timestamptz NOT NULL,
                holder_started timestamptz,
                lease_ms       integer,
                UNIQUE (namespace, name)
            );
            -- Tables of the first version: rows they hold keep NULLs here (then the guard checks the pid only, and sets no timeout).
            ALTER TABLE {{schema}}.leases ADD COLUMN IF NOT EXISTS holder_started timestamptz, ADD COLUMN IF NOT EXISTS lease_ms integer;
            CREATE OR REPLACE FUNCTION {{schema}}.assert_epoch(p_name text, p_epoch bigint, p_namespace text DEFAULT 'highlander')
            RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                r record;
                pass integer;
            BEGIN
                -- Checked twice: first without a lock, so that writers of a holder whose session has ended never take the
                -- row (a stream of FOR SHARE lockers would starve the next leader's bump); then under FOR SHARE, so that a
                -- call that passes is ordered before any later bump (which waits for the row until this transaction ends).
                FOR pass IN 1..2 LOOP
                    IF pass = 1 THEN
                        SELECT l.epoch, l.holder_pid, l.holder_started, l.lease_ms INTO r FROM {{schema}}.leases l
                         WHERE l.namespace = p_namespace AND l.name = p_name;
                    ELSE
                        SELECT l.epoch, l.holder_pid, l.holder_started, l.lease_ms INTO r FROM {{schema}}.leases l
                         WHERE l.namespace = p_namespace AND l.name = p_name FOR SHARE;
                    END IF;
                    IF r.epoch IS NULL OR r.epoch <> p_epoch THEN
                        RAISE EXCEPTION 'stale fencing epoch % for singleton "%" (namespace "%"): the current epoch is %',
                            p_epoch, p_name, p_namespace, coalesce(r.epoch::text, 'none')
                            USING ERRCODE = '{{StaleEpochSqlState}}',
                                  HINT = 'Another node has taken over this singleton: abandon this transaction.';
                    END IF;
                    -- The holder's lock session must still be alive: once it has ended, its lock is free and another node
                    -- may be about to bump. The backend-status snapshot is cached per transaction: clear it first.
                    -- backend_start tells a reused pid apart; it is NULL when this function's owner may not see the
                    -- holder role's sessions (then the pid alone is compared: docs/trust-model.md).
                    PERFORM pg_stat_clear_snapshot();
                    IF NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(r.holder_pid) a
                                    WHERE a.pid = r.holder_pid
                                      AND (r.holder_started IS NULL OR a.backend_start IS NULL OR a.backend_start = r.holder_started)) THEN
                        RAISE EXCEPTION 'stale fencing epoch % for singleton "%" (namespace "%"): the session of its holder (backend %) has ended',
                            p_epoch, p_name, p_namespace, r.holder_pid
                            USING ERRCODE = '{{StaleEpochSqlState}}',
                                  HINT = 'Another node may take over this singleton at any moment: abandon this transaction.';
                    END IF;
                END LOOP;
                -- The row stays locked until this transaction ends, and the next leader's bump waits for it: bound that by
                -- the holder's lease. The server ends this session (SQLSTATE 25P03) if the transaction stays idle longer
                -- (a frozen or dead client). Transaction-local: it ends with the transaction.
                -- https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-IDLE-IN-TRANSACTION-SESSION-TIMEOUT
                IF r.lease_ms IS NOT NULL AND r.lease_ms > 0 THEN
                    IF current_setting('idle_in_transaction_session_timeout')::interval = interval '0'
                       OR current_setting('idle_in_transaction_session_timeout')::interval > r.lease_ms * interval '1 millisecond' THEN
                        PERFORM set_config('idle_in_transaction_session_timeout', r.lease_ms::text, true);
                    END IF;
                END IF;
                RETURN r.epoch;
            END
            $fn$;
            COMMENT ON FUNCTION {{schema}}.assert_epoch(text, bigint, text) IS '{{GuardVersion}}';
            -- Only the roles you grant it to may hold a singleton's row (a transaction holding it delays the next leader's start).
            REVOKE EXECUTE ON FUNCTION {{schema}}.assert_epoch(text, bigint, text) FROM PUBLIC;
            """;
    }

    /// <summary>
    /// Of the given keys (bigint[]), those with a row. A semi-join with the unnested keys, not <c>key = ANY($1)</c>: the
    /// lock session plans once for any parameter, and with stale statistics on the table (too few rows when last
    /// analysed) that plan compared every row with every key (PostgreSQL hashes <c>= ANY</c> for a constant array only).
    /// </summary>
    public static string ExistingKeys(string schema)
    {
        EnsureValid(schema);
        return $"SELECT key FROM {schema}.leases WHERE key IN (SELECT unnest($1::bigint[]))";
    }

    /// <summary>Of the given keys (bigint[]), those whose row no guarded transaction holds: locked for the bump, the others skipped (a semi-join, as <see cref="ExistingKeys"/>).</summary>
    public static string LockFreeKeys(string schema)
    {
        EnsureValid(schema);
        return $"SELECT key FROM {schema}.leases WHERE key IN (SELECT unnest($1::bigint[])) FOR UPDATE SKIP LOCKED";
    }

    /// <summary>Of the given keys (bigint[]) and their names (text[], same order) in a namespace, those whose name is stored under another key.</summary>
    public static string MovedNames(string schema)
    {
        EnsureValid(schema);
        return $"SELECT c.key FROM unnest($1::bigint[], $2::text[]) AS c(key, name) WHERE EXISTS (SELECT 1 FROM {schema}.leases l WHERE l.namespace = $3 AND l.name = c.name AND l.key <> c.key)";
    }

    /// <summary>
    /// Bumps the epoch of one newly acquired key past every earlier one of its name stored under this key. Parameters:
    /// key, namespace, name, node id, endpoint, host, the lease in milliseconds. Returns the new epoch. The row
    /// records the holder's session (pid and start, so that the guard can tell when it has ended) and its lease (the
    /// longest a guarded transaction may stay idle).
    /// </summary>
    public static string Bump(string schema)
    {
        EnsureValid(schema);
        return Upsert(schema, movedEpoch: "NULL::bigint");
    }

    /// <summary>
    /// <see cref="Bump"/> in one statement with the move of a name stored under another key (an explicit key set or
    /// changed): that row is deleted and its epoch taken along. Parameters as <see cref="Bump"/>'s.
    /// </summary>
    public static string MoveAndBump(string schema)
    {
        EnsureValid(schema);
        return $"WITH moved AS (DELETE FROM {schema}.leases WHERE namespace = $2 AND name = $3 AND key <> $1 RETURNING epoch)\n"
            + Upsert(schema, movedEpoch: "(SELECT max(epoch) FROM moved)");
    }

    private static string Upsert(string schema, string movedEpoch) => $"""
        INSERT INTO {schema}.leases AS l (key, namespace, name, epoch, node_id, endpoint, host, holder_pid, acquired_at, holder_started, lease_ms)
        VALUES ($1, $2, $3, coalesce({movedEpoch}, 0) + 1, $4, $5, $6, pg_backend_pid(), clock_timestamp(),
                (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a), $7)
        ON CONFLICT (key) DO UPDATE
           SET epoch = GREATEST(l.epoch + 1, excluded.epoch), namespace = excluded.namespace, name = excluded.name,
               node_id = excluded.node_id, endpoint = excluded.endpoint, host = excluded.host,
               holder_pid = excluded.holder_pid, acquired_at = excluded.acquired_at,
               holder_started = excluded.holder_started, lease_ms = excluded.lease_ms
        RETURNING epoch
        """;

    /// <summary>How long creating or upgrading the fencing objects may wait for a table lock, in milliseconds.</summary>
    internal const int DdlLockTimeoutMilliseconds = 1000;

    /// <summary>
    /// Whether the fencing objects exist in their current version (one parameter: the schema name): the table with the
    /// columns the bump writes, and the guard function whose comment is <see cref="GuardVersion"/>.
    /// </summary>
    public const string Exists = $"""
        SELECT to_regclass(quote_ident($1) || '.leases') IS NOT NULL
           AND (SELECT count(*) FROM pg_attribute
                 WHERE attrelid = to_regclass(quote_ident($1) || '.leases') AND attname IN ('holder_started', 'lease_ms') AND NOT attisdropped) = 2
           AND coalesce(obj_description(to_regprocedure(quote_ident($1) || '.assert_epoch(text,bigint,text)'), 'pg_proc') = '{GuardVersion}', false)
        """;

    /// <summary>
    /// Serializes the creation and upgrade of the schema's objects (fencing's and messaging's) among concurrent nodes: a
    /// transaction advisory lock on a key derived from the schema, held until <paramref name="tx"/> ends.
    /// </summary>
    internal static async Task LockDdlAsync(NpgsqlConnection connection, NpgsqlTransaction tx, string schema, CancellationToken cancellationToken)
    {
        await using var serialize = new NpgsqlCommand("SELECT pg_advisory_xact_lock($1)", connection, tx);
        serialize.Parameters.Add(new NpgsqlParameter<long> { TypedValue = SingletonKey.Derive("highlander:ddl", schema) });
        await serialize.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Creates the fencing objects unless they exist in their current version, or upgrades older ones (in place: rows,
    /// epochs and grants are kept); concurrent nodes serialize on a transaction advisory lock. A role that may not upgrade
    /// them (it does not own them) is refused (retried like any refused server) with what to run.
    /// </summary>
    public static async Task EnsureCreatedAsync(NpgsqlConnection connection, string schema, CancellationToken cancellationToken)
    {
        if (await IsCurrentAsync(connection, null, schema, cancellationToken).ConfigureAwait(false))
        {
            return;
        }

        await using var tx = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await FencingSql.LockDdlAsync(connection, tx, schema, cancellationToken).ConfigureAwait(false);

        // Another node may have created or upgraded them while this one waited (the ALTER TABLE would lock the table again).
        if (await IsCurrentAsync(connection, tx, schema, cancellationToken).ConfigureAwait(false))
        {
            await tx.CommitAsync(cancellationToken).ConfigureAwait(false);
            return;
        }

        // ALTER TABLE takes the table's ACCESS EXCLUSIVE lock: queued behind a long guarded transaction (of an older
        // version, with no idle bound), it would hold up every other guarded transaction and bump behind it. Give up
        // soon instead (55P03: the session start fails and is retried).
        await using (var timeout = new NpgsqlCommand($"SELECT set_config('lock_timeout', '{DdlLockTimeoutMilliseconds}', true)", connection, tx))
        {
            await timeout.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }

        try
        {
            await using var ddl = new NpgsqlCommand(Ddl(schema), connection, tx);
            await ddl.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.InsufficientPrivilege)
        {
            throw new Leasing.RefusedException(
                $"The fencing objects in schema {schema} are missing or of an older version, and this role may not create or upgrade them ({ex.MessageText}). " +
                $"Run the fencing DDL (README, \"Fencing tokens\"; src/HighlanderPG/Fencing/FencingSql.cs) as their owner; it upgrades them in place.");
        }

        await tx.CommitAsync(cancellationToken).ConfigureAwait(false);
    }

    private static async Task<bool> IsCurrentAsync(NpgsqlConnection connection, NpgsqlTransaction? tx, string schema, CancellationToken cancellationToken)
    {
        await using var check = new NpgsqlCommand(Exists, connection, tx);
        check.Parameters.Add(new NpgsqlParameter<string> { TypedValue = schema });
        return (bool)(await check.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
    }

    private static void EnsureValid(string schema)
    {
        if (!IsValidSchema(schema))
        {
            throw new ArgumentException($"Fencing schema '{schema}' must be {SchemaRule}.", nameof(schema));
        }
    }
}


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

    [GeneratedRegex("^[a-z_][a-z0-9_]{0,62}$")]
    private static partial Regex SchemaPattern();

    public static bool IsValidSchema(string? schema) => schema is not null && SchemaPattern().IsMatch(schema);

    /// <summary>The DDL (idempotent). The schema name is validated (lowercase identifier) before it is put into SQL.</summary>
    public static string Ddl(string schema)
    {
        EnsureValid(schema);
        return $$"""
            CREATE SCHEMA IF NOT EXISTS {{schema}};
            CREATE TABLE IF NOT EXISTS {{schema}}.leases (
                key          bigint      PRIMARY KEY,
                namespace    text        NOT NULL,
                name         text        NOT NULL,
                epoch        bigint      NOT NULL CHECK (epoch > 0),
                node_id      text        NOT NULL,
                endpoint     text,
                host         text,
                holder_pid   integer     NOT NULL,
                acquired_at  timestamptz NOT NULL,
                UNIQUE (namespace, name)
            );
            CREATE OR REPLACE FUNCTION {{schema}}.assert_epoch(p_name text, p_epoch bigint, p_namespace text DEFAULT 'highlander')
            RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                current_epoch bigint;
            BEGIN
                -- FOR SHARE: until the caller's transaction ends, a new leader's epoch bump waits, so every write of this
                -- transaction is ordered before the next epoch; once bumped, every later call with this epoch fails.
                SELECT l.epoch INTO current_epoch FROM {{schema}}.leases l
                 WHERE l.namespace = p_namespace AND l.name = p_name FOR SHARE;
                IF current_epoch IS NULL OR current_epoch <> p_epoch THEN
                    RAISE EXCEPTION 'stale fencing epoch % for singleton "%" (namespace "%"): the current epoch is %',
                        p_epoch, p_name, p_namespace, coalesce(current_epoch::text, 'none')
                        USING ERRCODE = '{{StaleEpochSqlState}}',
                              HINT = 'Another node has taken over this singleton: abandon this transaction.';
                END IF;
                RETURN current_epoch;
            END
            $fn$;
            -- Only the roles you grant it to may hold a singleton's row (a long FOR SHARE delays the next leader's start).
            REVOKE EXECUTE ON FUNCTION {{schema}}.assert_epoch(text, bigint, text) FROM PUBLIC;
            """;
    }

    /// <summary>
    /// A name that moved to another key (an explicit key set or changed) takes its epoch along: parameters key,
    /// namespace, name; returns the moved rows' highest epoch (or null).
    /// </summary>
    public static string MoveName(string schema)
    {
        EnsureValid(schema);
        return $"WITH moved AS (DELETE FROM {schema}.leases WHERE namespace = $2 AND name = $3 AND key <> $1 RETURNING epoch) SELECT max(epoch) FROM moved";
    }

    /// <summary>
    /// Bumps the epoch of one newly acquired key past every earlier one of its name. Parameters: key, namespace, name,
    /// node id, endpoint, host, the moved epoch (or null). Returns the new epoch.
    /// </summary>
    public static string Bump(string schema)
    {
        EnsureValid(schema);
        return $"""
            INSERT INTO {schema}.leases AS l (key, namespace, name, epoch, node_id, endpoint, host, holder_pid, acquired_at)
            VALUES ($1, $2, $3, coalesce($7::bigint, 0) + 1, $4, $5, $6, pg_backend_pid(), clock_timestamp())
            ON CONFLICT (key) DO UPDATE
               SET epoch = GREATEST(l.epoch + 1, excluded.epoch), namespace = excluded.namespace, name = excluded.name,
                   node_id = excluded.node_id, endpoint = excluded.endpoint, host = excluded.host,
                   holder_pid = excluded.holder_pid, acquired_at = excluded.acquired_at
            RETURNING epoch
            """;
    }

    /// <summary>Whether the fencing objects exist (one parameter: the schema name).</summary>
    public const string Exists = "SELECT to_regclass(quote_ident($1) || '.leases') IS NOT NULL AND to_regprocedure(quote_ident($1) || '.assert_epoch(text,bigint,text)') IS NOT NULL";

    /// <summary>Creates the fencing objects unless they exist; concurrent nodes serialize on a transaction advisory lock.</summary>
    public static async Task EnsureCreatedAsync(NpgsqlConnection connection, string schema, CancellationToken cancellationToken)
    {
        await using (var check = new NpgsqlCommand(Exists, connection))
        {
            check.Parameters.Add(new NpgsqlParameter<string> { TypedValue = schema });
            if ((bool)(await check.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!)
            {
                return;
            }
        }

        await using var tx = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await using (var serialize = new NpgsqlCommand("SELECT pg_advisory_xact_lock($1)", connection, tx))
        {
            serialize.Parameters.Add(new NpgsqlParameter<long> { TypedValue = SingletonKey.Derive("highlander:ddl", schema) });
            await serialize.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }

        await using (var ddl = new NpgsqlCommand(Ddl(schema), connection, tx))
        {
            await ddl.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }

        await tx.CommitAsync(cancellationToken).ConfigureAwait(false);
    }

    private static void EnsureValid(string schema)
    {
        if (!IsValidSchema(schema))
        {
            throw new ArgumentException($"Fencing schema '{schema}' must be a lowercase SQL identifier (letters, digits, underscores; at most 63).", nameof(schema));
        }
    }
}

using HighlanderPG.Leasing;
using Npgsql;

namespace HighlanderPG.Placement;

/// <summary>A live member of the namespace's spread placement, as the server sees it.</summary>
/// <param name="NodeId">Its node id (from its lock session's <c>application_name</c>), or <see langword="null"/> when hidden from this role.</param>
/// <param name="Pid">The backend pid of its lock session.</param>
/// <param name="Age">How long its lock session has been up (server clock), or <see langword="null"/> when hidden from this role.</param>
/// <param name="Leading">How many exclusive advisory locks its lock session holds: the singletons it leads.</param>
internal sealed record Member(string? NodeId, int Pid, TimeSpan? Age, int Leading);

/// <summary>
/// Who takes part in the spread placement of a namespace: every lock session that holds a shared advisory lock on the
/// namespace's membership key. Liveness is the session's own (the server drops the lock with the session); there is no
/// table. Read from <c>pg_locks</c> joined with <c>pg_stat_activity</c>, in one statement that also counts each member's
/// exclusive advisory locks (the singletons it leads). See docs/lease-protocol.md, "Placement".
/// </summary>
internal static class Membership
{
    /// <summary>The membership key of <paramref name="namespace"/> (a name no singleton can have: names have no control characters).</summary>
    public static long Key(string @namespace) => SingletonKey.Derive(@namespace, "\u0001highlander-spread-members");

    /// <summary>Joins: a shared lock on the membership key, never blocking (nobody takes it exclusively), held until the session ends.</summary>
    public static async Task<bool> JoinAsync(NpgsqlConnection connection, long key)
    {
        await using var cmd = new NpgsqlCommand("SELECT pg_try_advisory_lock_shared($1)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
        return (bool)(await cmd.ExecuteScalarAsync().ConfigureAwait(false))!;
    }

    /// <summary>Leaves: gives the shared lock on the membership key back (the node is stopping).</summary>
    public static async Task<bool> LeaveAsync(NpgsqlConnection connection, long key)
    {
        await using var cmd = new NpgsqlCommand("SELECT pg_advisory_unlock_shared($1)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
        return (bool)(await cmd.ExecuteScalarAsync().ConfigureAwait(false))!;
    }

    /// <summary>
    /// The members (one <c>pg_locks</c> scan, materialised once), with this backend's pid and the server's clock (so that the
    /// read also serves as a heartbeat).
    /// </summary>
    public const string ReadSql = """
        WITH l AS MATERIALIZED (
                 SELECT pid, mode, (classid::bigint << 32) | objid::bigint AS key
                 FROM pg_locks
                 WHERE locktype = 'advisory' AND objsubid = 1 AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),
             c AS (SELECT pid, count(*) AS n FROM l WHERE mode = 'ExclusiveLock' GROUP BY pid)
        SELECT m.pid, a.application_name, (extract(epoch FROM clock_timestamp() - a.backend_start) * 1000)::bigint, coalesce(c.n, 0)::int,
               pg_backend_pid(), clock_timestamp()
        FROM l m
        LEFT JOIN c ON c.pid = m.pid
        LEFT JOIN pg_stat_activity a ON a.pid = m.pid
        WHERE m.key = $1 AND m.mode = 'ShareLock'
        UNION ALL
        SELECT NULL, NULL, NULL, NULL, pg_backend_pid(), clock_timestamp()
        """;

    /// <summary>Reads the members of <paramref name="key"/>; returns them with the backend pid and the server's clock.</summary>
    public static async Task<(List<Member> Members, int Pid, DateTime ServerTime)> ReadAsync(NpgsqlConnection connection, long key)
    {
        await using var cmd = new NpgsqlCommand(ReadSql, connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
        await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
        var members = new List<Member>();
        var pid = 0;
        var serverTime = default(DateTime);
        while (await reader.ReadAsync().ConfigureAwait(false))
        {
            pid = reader.GetInt32(4);
            serverTime = reader.GetDateTime(5);
            if (reader.IsDBNull(0))
            {
                continue;
            }

            var app = reader.IsDBNull(1) ? null : reader.GetString(1);
            members.Add(new Member(
                app is not null && app.StartsWith(HolderQuery.ApplicationNamePrefix, StringComparison.Ordinal) ? app[HolderQuery.ApplicationNamePrefix.Length..] : null,
                reader.GetInt32(0),
                reader.IsDBNull(2) ? null : TimeSpan.FromMilliseconds(Math.Max(0, reader.GetInt64(2))),
                reader.GetInt32(3)));
        }

        return (members, pid, serverTime);
    }
}

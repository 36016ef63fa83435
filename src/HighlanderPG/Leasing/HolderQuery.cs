using System.Data.Common;

namespace HighlanderPG.Leasing;

/// <summary>
/// Who holds which advisory key, from <c>pg_locks</c> joined with <c>pg_stat_activity</c>. A bigint advisory key
/// appears as <c>classid</c> (high 32 bits) and <c>objid</c> (low 32 bits) with <c>objsubid = 1</c>, per database.
/// https://www.postgresql.org/docs/current/view-pg-locks.html
/// </summary>
internal static class HolderQuery
{
    /// <summary>Application names of HighlanderPG lock sessions start with this; the node id follows.</summary>
    public const string ApplicationNamePrefix = "highlander/";

    /// <summary>Application names of HighlanderPG follower wait sessions start with this.</summary>
    public const string WaiterApplicationNamePrefix = "highlander-wait/";

    /// <summary>
    /// One parameter: the keys (bigint[]), hash-joined with the lock table (not an <c>= ANY</c> per lock row). The lock
    /// rows are filtered inside the join key (a lock that is not a granted exclusive advisory lock of this database gets
    /// NULL, which matches nothing), not by a condition on the scan: the lock session plans its prepared statements once,
    /// for any parameter (<c>plan_cache_mode = force_generic_plan</c>), and with such a condition the planner expected one
    /// lock row and chose a nested loop over the keys for each lock: at 1,000 keys and 1,000 locks a million comparisons,
    /// 84 ms of the server's CPU per question instead of 2-4 ms (PostgreSQL 15, measured; test: HolderQueryTests).
    /// </summary>
    public const string Sql = """
        SELECT w.key, l.pid, a.application_name, host(a.client_addr), a.backend_start
        FROM (SELECT pid,
                     CASE WHEN locktype = 'advisory' AND objsubid = 1 AND granted AND mode = 'ExclusiveLock'
                               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                          THEN (classid::bigint << 32) | objid::bigint END AS key
              FROM pg_locks OFFSET 0) AS l
        JOIN unnest($1::bigint[]) AS w(key) ON w.key = l.key
        LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        """;

    public static (long Key, LeaderInfo Leader) Read(DbDataReader reader)
    {
        var app = reader.IsDBNull(2) ? null : reader.GetString(2);
        var node = app is not null && app.StartsWith(ApplicationNamePrefix, StringComparison.Ordinal) ? app[ApplicationNamePrefix.Length..] : null;
        return (reader.GetInt64(0), new LeaderInfo(
            node,
            reader.GetInt32(1),
            app,
            reader.IsDBNull(3) ? null : reader.GetString(3),
            reader.IsDBNull(4) ? null : reader.GetFieldValue<DateTimeOffset>(4)));
    }
}

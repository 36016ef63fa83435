using HighlanderPG.Fencing;
using HighlanderPG.Leasing;
using Npgsql;

namespace HighlanderPG.Discovery;

/// <summary>
/// The whole cluster as the database sees it at one moment: every HighlanderPG node with a session open, every singleton
/// that is held (or known from the fencing table, or by a name given), its leader, since when, epoch and followers. Read
/// by <see cref="ReadAsync"/>; what the dashboard and <c>highlander status --watch</c> show.
/// </summary>
/// <remarks>
/// <para>
/// Everything comes from the database alone, so it covers every node, not only the reader's: <c>pg_stat_activity</c>
/// (lock sessions are named <c>highlander/{NodeId}</c>, follower wait sessions <c>highlander-wait/{NodeId}</c>),
/// <c>pg_locks</c> (which session holds which key) and, when it exists and the caller may read it, the fencing table
/// (names, epochs, since when, endpoint and host; a row is trusted only while the session it names holds the lock).
/// </para>
/// <para>
/// What the database does not know is not here: a node's restarts and errors (ask that node's
/// <see cref="IClusterSingletons"/>), the singletons a node registered but neither holds nor waits for, and the
/// hand-overs between two reads (<see cref="HandOversSince"/> compares two snapshots: a leader that changed twice in
/// between shows as one change, its epoch telling how many acquisitions there were when fencing is on).
/// </para>
/// </remarks>
public sealed class ClusterSnapshot
{
    private ClusterSnapshot(DateTimeOffset takenAt, string? @namespace, IReadOnlyList<ClusterNode> nodes, IReadOnlyList<ClusterSingleton> singletons, string? detailsUnavailable)
    {
        TakenAt = takenAt;
        Namespace = @namespace;
        Nodes = nodes;
        Singletons = singletons;
        DetailsUnavailable = detailsUnavailable;
    }

    /// <summary>When it was read, on the database server's clock.</summary>
    public DateTimeOffset TakenAt { get; }

    /// <summary>The namespace it was read for (<see langword="null"/>: every namespace).</summary>
    public string? Namespace { get; }

    /// <summary>Every node with a HighlanderPG session open in the database, by node id.</summary>
    public IReadOnlyList<ClusterNode> Nodes { get; }

    /// <summary>Every singleton held, or known from the fencing table or the names given, by name (unnamed keys last).</summary>
    public IReadOnlyList<ClusterSingleton> Singletons { get; }

    /// <summary>
    /// Why names, epochs and since-times from the fencing table are missing although the table exists (the caller's role
    /// may not read it: the grant that adds them is named); <see langword="null"/> when it was read or does not exist.
    /// </summary>
    public string? DetailsUnavailable { get; }

    /// <summary>
    /// Reads the cluster on an open connection of the caller's (in its transaction, if any; nothing it runs can fail
    /// for lack of privileges on the fencing table).
    /// </summary>
    /// <param name="connection">An open connection to the database the nodes use.</param>
    /// <param name="namespace">Show the singletons of this namespace (held keys of unknown namespace are shown too); <see langword="null"/> for every namespace.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="names">Names to recognise (their keys are derived in <paramref name="namespace"/>) and to list even when nobody holds them; optional.</param>
    /// <param name="cancellationToken">Cancels the queries.</param>
    public static async Task<ClusterSnapshot> ReadAsync(
        NpgsqlConnection connection,
        string? @namespace = "highlander",
        string fencingSchema = "highlander",
        IEnumerable<string>? names = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        if (!FencingSql.IsValidSchema(fencingSchema))
        {
            throw new ArgumentException($"Fencing schema '{fencingSchema}' must be {FencingSql.SchemaRule}.", nameof(fencingSchema));
        }

        var given = (names ?? []).Distinct(StringComparer.Ordinal).ToList();
        if (given.Count > 0 && @namespace is null)
        {
            throw new ArgumentException("Names can only be recognised in a namespace: give the namespace they are hashed in.", nameof(names));
        }

        var known = given.ToDictionary(n => SingletonKey.Derive(@namespace!, n), n => n);

        // The sessions, then the locks they hold or wait for.
        DateTimeOffset now;
        await using (var clock = new NpgsqlCommand("SELECT now()", connection))
        {
            now = new DateTimeOffset((DateTime)(await clock.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!, TimeSpan.Zero);
        }

        var sessions = new Dictionary<int, LeaderInfo>();
        await using (var cmd = new NpgsqlCommand(
            """
            SELECT 0::bigint, a.pid, a.application_name, host(a.client_addr), a.backend_start
            FROM pg_stat_activity a
            WHERE a.datname = current_database()
              AND (a.application_name LIKE 'highlander/%' OR a.application_name LIKE 'highlander-wait/%')
            ORDER BY a.backend_start
            """,
            connection))
        await using (var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
        {
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var (_, info) = HolderQuery.Read(reader);
                sessions[info.BackendPid] = WithNode(info);
            }
        }

        var holders = new Dictionary<long, LeaderInfo>();
        var waiting = new List<(long Key, LeaderInfo Session)>();
        await using (var cmd = new NpgsqlCommand(
            """
            SELECT ((l.classid::bigint << 32) | l.objid::bigint) AS key, l.pid, l.granted, l.mode
            FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.pid = ANY($1)
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            connection))
        {
            cmd.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = [.. sessions.Keys] });
            await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var key = reader.GetInt64(0);
                var session = sessions[reader.GetInt32(1)];
                if (session.NodeId is { } nodeId && Hosting.HighlanderNode.IsRehearsalKey(nodeId, key))
                {
                    continue; // the node's own take-over rehearsal, for a moment: not a singleton (docs/lease-protocol.md, "Rehearsal")
                }

                var granted = reader.GetBoolean(2);
                if (granted && reader.GetString(3) == "ExclusiveLock" && IsLockSession(session))
                {
                    holders[key] = session;
                }
                else if (!granted && !IsLockSession(session))
                {
                    waiting.Add((key, session));
                }
            }
        }

        var (rows, unavailable) = await ReadFencingRowsAsync(connection, fencingSchema, @namespace, [.. holders.Keys], cancellationToken).ConfigureAwait(false);

        var singletons = new List<ClusterSingleton>();
        foreach (var key in holders.Keys.Concat(rows.Keys).Concat(known.Keys).Distinct())
        {
            var leader = holders.GetValueOrDefault(key);
            var row = rows.TryGetValue(key, out var r) ? r : null;
            var current = row is not null && leader is not null && row.Pid == leader.BackendPid ? row : null;
            if (@namespace is not null && row is not null && row.Namespace != @namespace && !known.ContainsKey(key))
            {
                continue; // another namespace's singleton
            }

            var name = known.TryGetValue(key, out var n) ? n : row?.Name;
            var ns = known.ContainsKey(key) ? @namespace : row?.Namespace;
            var followers = waiting.Where(w => w.Key == key).Select(w => w.Session).DistinctBy(s => s.NodeId).ToList();
            singletons.Add(new ClusterSingleton(
                key, name, ns, leader, current?.AcquiredAt, leader is null ? null : current?.Epoch, row?.Epoch,
                current?.Endpoint, current?.Host, leader is null ? row?.NodeId : null, followers));
        }

        singletons.Sort((a, b) =>
        {
            var byName = string.CompareOrdinal(a.Name ?? "\uffff", b.Name ?? "\uffff");
            return byName != 0 ? byName : a.Key.CompareTo(b.Key);
        });

        var nodes = sessions.Values
            .Where(s => s.NodeId is not null)
            .GroupBy(s => s.NodeId!, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g =>
            {
                var lockSessions = g.Where(IsLockSession).ToList();
                var lockPids = lockSessions.Select(s => s.BackendPid).ToHashSet();
                var waitPids = g.Where(s => !IsLockSession(s)).Select(s => s.BackendPid).ToHashSet();
                return new ClusterNode(
                    g.Key,
                    lockSessions,
                    [.. g.Where(s => !IsLockSession(s))],
                    [.. singletons.Where(s => s.Leader is not null && lockPids.Contains(s.Leader.BackendPid)).Select(s => s.Key)],
                    [.. waiting.Where(w => waitPids.Contains(w.Session.BackendPid)).Select(w => w.Key).Distinct()]);
            })
            .ToList();

        return new ClusterSnapshot(now, @namespace, nodes, singletons, unavailable);
    }

    /// <summary>
    /// The hand-overs between <paramref name="previous"/> and this snapshot: each singleton whose leader (node, backend
    /// session or epoch) changed, came or went. Stamped with this snapshot's <see cref="TakenAt"/> (they happened
    /// since <paramref name="previous"/> was taken).
    /// </summary>
    /// <param name="previous">An earlier snapshot of the same database and namespace.</param>
    public IReadOnlyList<ClusterHandOver> HandOversSince(ClusterSnapshot previous)
    {
        ArgumentNullException.ThrowIfNull(previous);
        var before = previous.Singletons.ToDictionary(s => s.Key);
        var changes = new List<ClusterHandOver>();
        foreach (var now in Singletons)
        {
            var was = before.GetValueOrDefault(now.Key);
            var wasPid = was?.Leader?.BackendPid;
            var isPid = now.Leader?.BackendPid;
            var wasEpoch = was?.FencingEpoch;
            if (wasPid != isPid || (now.FencingEpoch is not null && wasEpoch is not null && now.FencingEpoch != wasEpoch))
            {
                if (wasPid is null && isPid is null)
                {
                    continue;
                }

                changes.Add(new ClusterHandOver(now.Key, now.Name ?? was?.Name, was?.Leader?.NodeId, now.Leader?.NodeId, wasEpoch, now.FencingEpoch, TakenAt));
            }

            before.Remove(now.Key);
        }

        foreach (var gone in before.Values.Where(s => s.Leader is not null))
        {
            changes.Add(new ClusterHandOver(gone.Key, gone.Name, gone.Leader!.NodeId, null, gone.FencingEpoch, null, TakenAt));
        }

        return changes;
    }

    private static bool IsLockSession(LeaderInfo session) =>
        session.ApplicationName?.StartsWith(HolderQuery.ApplicationNamePrefix, StringComparison.Ordinal) == true;

    // HolderQuery names the node of lock sessions only; a wait session's node follows its own prefix.
    private static LeaderInfo WithNode(LeaderInfo info) =>
        info.NodeId is null && info.ApplicationName?.StartsWith(HolderQuery.WaiterApplicationNamePrefix, StringComparison.Ordinal) == true
            ? new LeaderInfo(info.ApplicationName[HolderQuery.WaiterApplicationNamePrefix.Length..], info.BackendPid, info.ApplicationName, info.ClientAddress, info.SessionStarted)
            : info;

    private sealed record FencingRow(string Namespace, string Name, long Epoch, string NodeId, string? Endpoint, string? Host, int Pid, DateTimeOffset AcquiredAt);

    private static async Task<(Dictionary<long, FencingRow> Rows, string? Unavailable)> ReadFencingRowsAsync(
        NpgsqlConnection connection, string schema, string? @namespace, long[] held, CancellationToken cancellationToken)
    {
        // The catalogs are readable by every role and the privilege functions answer without raising, so a caller without
        // rights on the table gets pg_locks' answer and a note (never 42501, which would abort its transaction).
        bool exists, usable = false, readable = false;
        await using (var check = new NpgsqlCommand(
            """
            SELECT has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT')
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND c.relname = 'leases' AND c.relkind IN ('r', 'p')
            """,
            connection))
        {
            check.Parameters.Add(new NpgsqlParameter<string> { TypedValue = schema });
            await using var reader = await check.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            exists = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            if (exists)
            {
                usable = reader.GetBoolean(0);
                readable = reader.GetBoolean(1);
            }
        }

        var rows = new Dictionary<long, FencingRow>();
        if (!exists)
        {
            return (rows, null);
        }

        if (!(usable && readable))
        {
            var grant = usable
                ? $"GRANT SELECT ON {schema}.leases"
                : readable ? $"GRANT USAGE ON SCHEMA {schema}" : $"GRANT USAGE ON SCHEMA {schema} and GRANT SELECT ON {schema}.leases";
            return (rows, $"The fencing table {schema}.leases exists but this role may not read it: names, epochs and since-times are missing. {grant} to this role would add them.");
        }

        // The schema was validated (a lowercase identifier) before it is put into the statement; values are parameters.
        await using var cmd = new NpgsqlCommand(
            $"SELECT key, namespace, name, epoch, node_id, endpoint, host, holder_pid, acquired_at FROM {schema}.leases WHERE $1::text IS NULL OR namespace = $1 OR key = ANY($2)",
            connection);
        cmd.Parameters.Add(new NpgsqlParameter<string?> { TypedValue = @namespace, DataTypeName = "text" });
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = held });
        await using (var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
        {
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                rows[reader.GetInt64(0)] = new FencingRow(
                    reader.GetString(1), reader.GetString(2), reader.GetInt64(3), reader.GetString(4),
                    reader.IsDBNull(5) ? null : reader.GetString(5), reader.IsDBNull(6) ? null : reader.GetString(6),
                    reader.GetInt32(7), reader.GetFieldValue<DateTimeOffset>(8));
            }
        }

        return (rows, null);
    }
}

/// <summary>One HighlanderPG node as the database sees it: its sessions, what it leads, what it waits for.</summary>
public sealed class ClusterNode
{
    internal ClusterNode(string nodeId, IReadOnlyList<LeaderInfo> lockSessions, IReadOnlyList<LeaderInfo> waitSessions, IReadOnlyList<long> leading, IReadOnlyList<long> waitingOn)
    {
        NodeId = nodeId;
        LockSessions = lockSessions;
        WaitSessions = waitSessions;
        Leading = leading;
        WaitingOn = waitingOn;
    }

    /// <summary>The node id (from <c>application_name</c>).</summary>
    public string NodeId { get; }

    /// <summary>Its lock sessions (<c>highlander/{NodeId}</c>): one, or briefly two while a broken one is being replaced; none while it reconnects.</summary>
    public IReadOnlyList<LeaderInfo> LockSessions { get; }

    /// <summary>Its follower wait sessions (<c>highlander-wait/{NodeId}</c>): present while it follows a singleton another node holds.</summary>
    public IReadOnlyList<LeaderInfo> WaitSessions { get; }

    /// <summary>The keys it holds (see <see cref="ClusterSnapshot.Singletons"/> for their names).</summary>
    public IReadOnlyList<long> Leading { get; }

    /// <summary>The keys its wait session was seen waiting on (one key per holder it watches).</summary>
    public IReadOnlyList<long> WaitingOn { get; }
}

/// <summary>One singleton as the database sees it.</summary>
public sealed class ClusterSingleton
{
    internal ClusterSingleton(long key, string? name, string? @namespace, LeaderInfo? leader, DateTimeOffset? since, long? fencingEpoch, long? lastEpoch, string? endpoint, string? host, string? lastNodeId, IReadOnlyList<LeaderInfo> followers)
    {
        Key = key;
        Name = name;
        Namespace = @namespace;
        Leader = leader;
        Since = since;
        FencingEpoch = fencingEpoch;
        LastEpoch = lastEpoch;
        Endpoint = endpoint;
        Host = host;
        LastNodeId = lastNodeId;
        Followers = followers;
    }

    /// <summary>The advisory lock key.</summary>
    public long Key { get; }

    /// <summary>Its name, when known (from the names given, or the fencing table).</summary>
    public string? Name { get; }

    /// <summary>Its namespace, when known.</summary>
    public string? Namespace { get; }

    /// <summary>The lock session holding it, or <see langword="null"/> when nobody leads it now.</summary>
    public LeaderInfo? Leader { get; }

    /// <summary>When the current leader acquired it (from the fencing table), when fencing is on.</summary>
    public DateTimeOffset? Since { get; }

    /// <summary>The current leader's fencing epoch, when fencing is on.</summary>
    public long? FencingEpoch { get; }

    /// <summary>The latest epoch in the fencing table (also while nobody leads it), when fencing is on.</summary>
    public long? LastEpoch { get; }

    /// <summary>The endpoint the leader published, when fencing is on.</summary>
    public string? Endpoint { get; }

    /// <summary>The leader's host name as it published it, when fencing is on.</summary>
    public string? Host { get; }

    /// <summary>While nobody leads it: the node that led it last (from the fencing table), when fencing is on.</summary>
    public string? LastNodeId { get; }

    /// <summary>Nodes whose wait session was seen waiting on its key (a follower watches one key per holder, so not every follower shows).</summary>
    public IReadOnlyList<LeaderInfo> Followers { get; }
}

/// <summary>A change of a singleton's leader seen between two snapshots (<see cref="ClusterSnapshot.HandOversSince"/>).</summary>
public sealed class ClusterHandOver
{
    internal ClusterHandOver(long key, string? name, string? from, string? to, long? fromEpoch, long? toEpoch, DateTimeOffset observedAt)
    {
        Key = key;
        Name = name;
        From = from;
        To = to;
        FromEpoch = fromEpoch;
        ToEpoch = toEpoch;
        ObservedAt = observedAt;
    }

    /// <summary>The singleton's key.</summary>
    public long Key { get; }

    /// <summary>Its name, when known.</summary>
    public string? Name { get; }

    /// <summary>The node that led it before (<see langword="null"/>: nobody).</summary>
    public string? From { get; }

    /// <summary>The node that leads it now (<see langword="null"/>: nobody).</summary>
    public string? To { get; }

    /// <summary>The epoch before, when fencing is on.</summary>
    public long? FromEpoch { get; }

    /// <summary>The epoch now, when fencing is on.</summary>
    public long? ToEpoch { get; }

    /// <summary>When the change was seen (the later snapshot's time, server clock): it happened since the earlier one.</summary>
    public DateTimeOffset ObservedAt { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Name ?? Key.ToString(System.Globalization.CultureInfo.InvariantCulture)}: {From ?? "nobody"} -> {To ?? "nobody"}";
}

using System.Globalization;
using System.Text;
using System.Text.Json;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Diagnostics;
using HighlanderPG.Discovery;
using HighlanderPG.Hosting;
using HighlanderPG.Operations;
using Npgsql;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace HighlanderPG.Cli.Commands;

/// <summary>
/// <c>highlander status --watch</c>: the dashboard's view in the terminal. Reads <see cref="ClusterSnapshot"/> every
/// interval and redraws a live table when something changed (Spectre.Console's Live display on a terminal; a plain
/// block per change when the output is redirected; with <c>--json</c>, one JSON object per change, one per line).
/// Ctrl+C or SIGTERM ends it with exit 0.
/// </summary>
internal static class StatusWatch
{
    private const int HandOverHistory = 10;

    public static async Task<int> RunAsync(ResolvedConnection resolved, string @namespace, string fencingSchema, IReadOnlyList<string> names, bool json, TimeSpan interval)
    {
        using var stop = new StopSignals();

        // With several hosts, the primary (the locks are there only), as one-shot status reads it.
        var builder = ConnectionSettings.TargetPrimary(new NpgsqlConnectionStringBuilder(resolved.ConnectionString) { Pooling = false, ApplicationName = "highlander-status" }, overrideStandbyTargets: true);
        var watcher = new Watcher(builder.ConnectionString, @namespace, fencingSchema, names);
        try
        {
            // The first read decides whether the database can be reached at all (exit 4, like `status`).
            await watcher.ReadAsync(stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stop.Token.IsCancellationRequested)
        {
            return ExitCodes.Ok;
        }
        catch (ArgumentException ex)
        {
            Say.Error("status", ex.Message);
            return ExitCodes.Usage;
        }
        catch (Exception ex) when (ex is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException or IOException)
        {
            Say.Error("status", $"cannot query {resolved.Display}: {ex.Message}");
            return ExitCodes.CannotConnect;
        }

        try
        {
            if (json)
            {
                await WatchJsonAsync(watcher, interval, stop.Token).ConfigureAwait(false);
            }
            else if (!Console.IsOutputRedirected)
            {
                await AnsiConsole.Live(Render(watcher, resolved.Display, interval)).AutoClear(false).StartAsync(async live =>
                {
                    await LoopAsync(watcher, interval, () =>
                    {
                        live.UpdateTarget(Render(watcher, resolved.Display, interval));
                        live.Refresh();
                    }, stop.Token).ConfigureAwait(false);
                }).ConfigureAwait(false);
            }
            else
            {
                WritePlain(watcher, resolved.Display);
                await LoopAsync(watcher, interval, () => WritePlain(watcher, resolved.Display), stop.Token).ConfigureAwait(false);
            }
        }
        finally
        {
            await watcher.DisposeAsync().ConfigureAwait(false);
        }

        return ExitCodes.Ok;
    }

    private static async Task WatchJsonAsync(Watcher watcher, TimeSpan interval, CancellationToken stop)
    {
        using var stdout = Console.OpenStandardOutput();
        var printed = 0;
        void Print()
        {
            var fresh = watcher.HandOvers.Take(watcher.HandOverCount - printed).Reverse().ToList();
            printed = watcher.HandOverCount;
            WriteJsonLine(watcher.Snapshot!, watcher.Error, fresh, watcher.HoldOffs, watcher.Names, stdout);
        }

        Print();
        await LoopAsync(watcher, interval, Print, stop).ConfigureAwait(false);
    }

    /// <summary>Reads every <paramref name="interval"/> and calls <paramref name="changed"/> when the view changed, until <paramref name="stop"/>.</summary>
    private static async Task LoopAsync(Watcher watcher, TimeSpan interval, Action changed, CancellationToken stop)
    {
        try
        {
            while (true)
            {
                await Task.Delay(interval, stop).ConfigureAwait(false);
                bool didChange;
                try
                {
                    didChange = await watcher.ReadAsync(stop).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException or IOException)
                {
                    // Shown in the view (the last snapshot stays); the next read reconnects.
                    didChange = watcher.Fail(ex.Message);
                }

                if (didChange)
                {
                    changed();
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>One JSON object on one line: the snapshot, the hand-overs seen since the previous line, the hold-offs running.</summary>
    internal static void WriteJsonLine(ClusterSnapshot snapshot, string? error, IReadOnlyList<ClusterHandOver> handOvers, IReadOnlyList<HoldOff> holdOffs, IReadOnlyDictionary<long, string> holdOffNames, Stream output)
    {
        using (var w = new Utf8JsonWriter(output))
        {
            w.WriteStartObject();
            w.WriteString("takenAt", snapshot.TakenAt);
            WriteStringOrNull(w, "namespace", snapshot.Namespace);
            WriteStringOrNull(w, "error", error);
            WriteStringOrNull(w, "detailsUnavailable", snapshot.DetailsUnavailable);
            var names = snapshot.Singletons.ToDictionary(s => s.Key, s => s.Name);
            w.WriteStartArray("nodes");
            foreach (var node in snapshot.Nodes)
            {
                w.WriteStartObject();
                w.WriteString("node", node.NodeId);
                w.WriteStartArray("lockSessions");
                foreach (var session in node.LockSessions)
                {
                    WriteSession(w, session);
                }

                w.WriteEndArray();
                w.WriteStartArray("waitSessions");
                foreach (var session in node.WaitSessions)
                {
                    WriteSession(w, session);
                }

                w.WriteEndArray();
                WriteKeys(w, "leading", node.Leading, names);
                WriteKeys(w, "waitingOn", node.WaitingOn, names);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteStartArray("singletons");
            foreach (var s in snapshot.Singletons)
            {
                w.WriteStartObject();
                WriteStringOrNull(w, "name", s.Name); // name, then leader: `"name":"N","leader":{"node":"X"` reads as one phrase
                w.WritePropertyName("leader");
                if (s.Leader is null)
                {
                    w.WriteNullValue();
                }
                else
                {
                    WriteSession(w, s.Leader);
                }

                w.WriteNumber("key", s.Key);
                WriteStringOrNull(w, "namespace", s.Namespace);
                WriteTimeOrNull(w, "since", s.Since);
                WriteNumberOrNull(w, "epoch", s.FencingEpoch);
                WriteNumberOrNull(w, "lastEpoch", s.LastEpoch);
                WriteStringOrNull(w, "endpoint", s.Endpoint);
                WriteStringOrNull(w, "host", s.Host);
                WriteStringOrNull(w, "lastNode", s.LastNodeId);
                w.WriteStartArray("followers");
                foreach (var follower in s.Followers)
                {
                    WriteSession(w, follower);
                }

                w.WriteEndArray();
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteStartArray("handOvers");
            foreach (var h in handOvers)
            {
                w.WriteStartObject();
                WriteStringOrNull(w, "name", h.Name);
                WriteStringOrNull(w, "from", h.From);
                WriteStringOrNull(w, "to", h.To);
                w.WriteNumber("key", h.Key);
                WriteNumberOrNull(w, "fromEpoch", h.FromEpoch);
                WriteNumberOrNull(w, "toEpoch", h.ToEpoch);
                w.WriteString("observedAt", h.ObservedAt);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteStartArray("holdOffs");
            foreach (var holdOff in holdOffs)
            {
                HoldOffLines.WriteJson(w, holdOff, holdOffNames);
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        output.Write("\n"u8);
        output.Flush();
    }

    private static IRenderable Render(Watcher watcher, string database, TimeSpan interval)
    {
        var snapshot = watcher.Snapshot!;
        var singletons = new Table().Border(TableBorder.Rounded).Expand()
            .Title($"[bold]Singletons[/] in {Markup.Escape(database)}, namespace {Markup.Escape(snapshot.Namespace ?? "(all)")}");
        foreach (var header in new[] { "name", "leader", "since", "epoch", "followers seen" })
        {
            singletons.AddColumn(new TableColumn(header).NoWrap());
        }

        foreach (var row in SingletonRows(snapshot))
        {
            singletons.AddRow(
                Markup.Escape(row[0]),
                row[1] == "nobody" ? "[red]nobody[/]" : $"[green]{Markup.Escape(row[1])}[/]",
                Markup.Escape(row[2]),
                Markup.Escape(row[3]),
                Markup.Escape(row[4]));
        }

        var nodes = new Table().Border(TableBorder.Rounded).Expand().Title("[bold]Nodes[/]");
        foreach (var header in new[] { "node", "lock session", "leads", "waiting on" })
        {
            nodes.AddColumn(new TableColumn(header));
        }

        foreach (var row in NodeRows(snapshot))
        {
            nodes.AddRow(row.Select(Markup.Escape).ToArray());
        }

        var handOvers = new Table().Border(TableBorder.Rounded).Expand().Title("[bold]Hand-overs seen[/] (since this watch started)");
        foreach (var header in new[] { "seen at", "singleton", "from", "to", "epoch" })
        {
            handOvers.AddColumn(new TableColumn(header).NoWrap());
        }

        foreach (var row in HandOverRows(watcher.HandOvers))
        {
            handOvers.AddRow(row.Select(Markup.Escape).ToArray());
        }

        var status = watcher.Error is null
            ? $"[green]live[/] · read {FormatTime(snapshot.TakenAt)} · every {Durations.Format(interval)} · Ctrl+C to stop"
            : $"[red]database unreachable[/] ({Markup.Escape(watcher.Error)}) · last read {FormatTime(snapshot.TakenAt)}";
        var parts = new List<IRenderable> { new Markup(status), singletons, nodes };
        foreach (var line in HoldOffLines.Lines(watcher.HoldOffs, watcher.Names))
        {
            parts.Add(new Markup("[yellow]" + Markup.Escape(line) + "[/]"));
        }

        parts.Add(handOvers);
        if (snapshot.DetailsUnavailable is not null)
        {
            parts.Insert(1, new Markup("[yellow]" + Markup.Escape(snapshot.DetailsUnavailable) + "[/]"));
        }

        return new Rows(parts);
    }

    private static void WritePlain(Watcher watcher, string database)
    {
        var snapshot = watcher.Snapshot!;
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"-- {FormatTime(snapshot.TakenAt)} {database} namespace {snapshot.Namespace ?? "(all)"}");
        text.Append(watcher.Error is null ? "\n" : $" (database unreachable: {watcher.Error})\n");
        Columns(text, ["NAME", "LEADER", "SINCE", "EPOCH", "FOLLOWERS"], SingletonRows(snapshot));
        Columns(text, ["NODE", "LOCK SESSION", "LEADS", "WAITING ON"], NodeRows(snapshot));
        foreach (var line in HoldOffLines.Lines(watcher.HoldOffs, watcher.Names))
        {
            text.Append(line).Append('\n');
        }

        var handOvers = HandOverRows(watcher.HandOvers).ToList();
        if (handOvers.Count > 0)
        {
            Columns(text, ["HAND-OVER SEEN", "SINGLETON", "FROM", "TO", "EPOCH"], handOvers);
        }

        Console.Out.WriteLine(text.ToString());
        Console.Out.Flush();
    }

    private static void Columns(StringBuilder text, string[] headers, IEnumerable<string[]> rows)
    {
        var all = rows.Prepend(headers).ToList();
        var widths = headers.Select((_, i) => all.Max(r => r[i].Length)).ToArray();
        foreach (var line in all)
        {
            text.Append(string.Join("  ", line.Select((cell, i) => i == line.Length - 1 ? cell : cell.PadRight(widths[i]))).TrimEnd()).Append('\n');
        }
    }

    private static IEnumerable<string[]> SingletonRows(ClusterSnapshot snapshot) => snapshot.Singletons.Select(s =>
    {
        var since = s.Since ?? s.Leader?.SessionStarted;
        return new[]
        {
            s.Name ?? $"(key {s.Key})",
            s.Leader is null ? "nobody" : s.Leader.NodeId ?? s.Leader.ApplicationName ?? "?",
            since is null ? "-" : FormatTime(since.Value) + (s.Since is null ? " (session)" : ""),
            s.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? (s.LastEpoch is { } last ? $"{last} (last)" : "-"),
            s.Followers.Count == 0 ? "-" : string.Join(",", s.Followers.Select(f => f.NodeId ?? "?")),
        };
    });

    private static IEnumerable<string[]> NodeRows(ClusterSnapshot snapshot)
    {
        var names = snapshot.Singletons.ToDictionary(s => s.Key, s => s.Name ?? $"(key {s.Key})");
        return snapshot.Nodes.Select(n => new[]
        {
            n.NodeId,
            n.LockSessions.Count == 0 ? "none (reconnecting)" : string.Join(", ", n.LockSessions.Select(l => $"backend {l.BackendPid}{(l.ClientAddress is null ? "" : " at " + l.ClientAddress)}")),
            n.Leading.Count == 0 ? "-" : string.Join(",", n.Leading.Select(k => names.GetValueOrDefault(k) ?? $"(key {k})")),
            n.WaitingOn.Count == 0 ? "-" : string.Join(",", n.WaitingOn.Select(k => names.GetValueOrDefault(k) ?? $"(key {k})")),
        });
    }

    private static IEnumerable<string[]> HandOverRows(IEnumerable<ClusterHandOver> handOvers) => handOvers.Select(h => new[]
    {
        FormatTime(h.ObservedAt),
        h.Name ?? $"(key {h.Key})",
        h.From ?? "nobody",
        h.To ?? "nobody",
        $"{h.FromEpoch?.ToString(CultureInfo.InvariantCulture) ?? "-"} -> {h.ToEpoch?.ToString(CultureInfo.InvariantCulture) ?? "-"}",
    });

    private static string FormatTime(DateTimeOffset time) => time.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);

    private static void WriteKeys(Utf8JsonWriter w, string name, IReadOnlyList<long> keys, Dictionary<long, string?> names)
    {
        w.WriteStartArray(name);
        foreach (var key in keys)
        {
            w.WriteStringValue(names.GetValueOrDefault(key) ?? "key " + key.ToString(CultureInfo.InvariantCulture));
        }

        w.WriteEndArray();
    }

    private static void WriteSession(Utf8JsonWriter w, LeaderInfo session)
    {
        w.WriteStartObject();
        WriteStringOrNull(w, "node", session.NodeId);
        w.WriteNumber("backendPid", session.BackendPid);
        WriteStringOrNull(w, "applicationName", session.ApplicationName);
        WriteStringOrNull(w, "clientAddress", session.ClientAddress);
        WriteTimeOrNull(w, "sessionStarted", session.SessionStarted);
        w.WriteEndObject();
    }

    private static void WriteStringOrNull(Utf8JsonWriter w, string name, string? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, value);
        }
    }

    private static void WriteNumberOrNull(Utf8JsonWriter w, string name, long? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteNumber(name, value.Value);
        }
    }

    private static void WriteTimeOrNull(Utf8JsonWriter w, string name, DateTimeOffset? value)
    {
        if (value is null)
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteString(name, value.Value);
        }
    }

    /// <summary>The reads, on one unpooled connection reopened after a failure, and what they saw.</summary>
    private sealed class Watcher(string connectionString, string @namespace, string fencingSchema, IReadOnlyList<string> names) : IAsyncDisposable
    {
        private readonly LinkedList<ClusterHandOver> _handOvers = new();
        private NpgsqlConnection? _connection;
        private string? _fingerprint;

        public ClusterSnapshot? Snapshot { get; private set; }

        public string? Error { get; private set; }

        /// <summary>The hold-offs running at the last read (none when they cannot be read).</summary>
        public IReadOnlyList<HoldOff> HoldOffs { get; private set; } = [];

        /// <summary>Key to name for the hold-offs: the snapshot's names, then those given.</summary>
        public IReadOnlyDictionary<long, string> Names { get; private set; } = new Dictionary<long, string>();

        /// <summary>Hand-overs seen, newest first (at most <see cref="HandOverHistory"/>).</summary>
        public IEnumerable<ClusterHandOver> HandOvers => _handOvers;

        /// <summary>How many hand-overs were seen in all.</summary>
        public int HandOverCount { get; private set; }

        /// <summary>Reads a snapshot; whether the view changed (anything but the time of reading).</summary>
        public async Task<bool> ReadAsync(CancellationToken cancellationToken)
        {
            if (_connection is null)
            {
                var connection = new NpgsqlConnection(connectionString);
                try
                {
                    await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    await connection.DisposeAsync().ConfigureAwait(false);
                    throw;
                }

                _connection = connection;
            }

            ClusterSnapshot snapshot;
            try
            {
                snapshot = await ClusterSnapshot.ReadAsync(_connection, @namespace, fencingSchema, names, cancellationToken).ConfigureAwait(false);
                HoldOffs = await HoldOffLines.TryReadAsync(_connection, fencingSchema, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is NpgsqlException or IOException or TimeoutException)
            {
                await _connection.DisposeAsync().ConfigureAwait(false);
                _connection = null;
                throw;
            }

            if (Snapshot is not null)
            {
                foreach (var change in snapshot.HandOversSince(Snapshot))
                {
                    _handOvers.AddFirst(change);
                    HandOverCount++;
                    if (_handOvers.Count > HandOverHistory)
                    {
                        _handOvers.RemoveLast();
                    }
                }
            }

            Snapshot = snapshot;
            Names = HoldOffLines.Names(snapshot.Singletons.Select(s => (s.Key, s.Name)), names, snapshot.Namespace ?? @namespace);
            var hadError = Error is not null;
            Error = null;
            var fingerprint = Fingerprint(snapshot);
            var changed = fingerprint != _fingerprint || hadError;
            _fingerprint = fingerprint;
            return changed;
        }

        /// <summary>Records a failed read; whether the view changed (the error is new or different).</summary>
        public bool Fail(string error)
        {
            var changed = Error != error;
            Error = error;
            return changed;
        }

        private string Fingerprint(ClusterSnapshot snapshot)
        {
            using var buffer = new MemoryStream();
            WriteJsonLine(snapshot, null, [], HoldOffs, Names, buffer);
            var text = Encoding.UTF8.GetString(buffer.ToArray());
            return text[text.IndexOf(",\"namespace\"", StringComparison.Ordinal)..]; // without takenAt
        }

        public async ValueTask DisposeAsync()
        {
            if (_connection is not null)
            {
                await _connection.DisposeAsync().ConfigureAwait(false);
            }
        }
    }
}

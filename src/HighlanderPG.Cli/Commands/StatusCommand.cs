using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Diagnostics;
using HighlanderPG.Discovery;
using HighlanderPG.Operations;
using Npgsql;
using Spectre.Console;

namespace HighlanderPG.Cli.Commands;

/// <summary><c>highlander status</c>: every singleton held in the database, with its holder and followers.</summary>
internal static class StatusCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON (an array, one object per held singleton) instead of a table." };
        var connection = CliOptions.Connection();
        var ns = CliOptions.Namespace();
        var names = new Option<string[]>("--name")
        {
            Description = "A name to recognise (repeatable): without the fencing table, names are known only for the names given.",
            HelpName = "NAME",
            AllowMultipleArgumentsPerToken = false,
        };
        names.Validators.Add(result =>
        {
            if (result.Tokens.Any(t => string.IsNullOrWhiteSpace(t.Value)))
            {
                result.AddError("--name must not be blank.");
            }
        });
        var fencingSchema = new Option<string?>("--fencing-schema") { Description = "Schema of the fencing table, read if it exists (default highlander).", HelpName = "SCHEMA" };
        var watch = new Option<bool>("--watch")
        {
            Description = "Keep watching: a live view of the whole cluster (nodes, singletons, leaders, epochs, followers, hand-overs seen), redrawn on change until Ctrl+C (exit 0). With --json: one JSON snapshot per change, one per line.",
        };
        var interval = CliOptions.Duration("--interval", "With --watch: how often the database is read (default 1s, at least 100ms).");
        var command = new Command("status", "Show every singleton currently held in the database: name (where known), holding node, since when, backend pid, client address, epoch, followers.")
        {
            json, connection, ns, names, fencingSchema, watch, interval,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var every = parse.GetValue(interval);
            if (every is not null && !parse.GetValue(watch))
            {
                Say.Error("status", "--interval goes with --watch.");
                return ExitCodes.Usage;
            }

            if (every is { } tooShort && tooShort < TimeSpan.FromMilliseconds(100))
            {
                Say.Error("status", $"--interval {Durations.Format(tooShort)} is too short: at least 100ms.");
                return ExitCodes.Usage;
            }

            var resolved = RunCommand.ResolveConnection(parse.GetValue(connection), "status");
            if (resolved is null)
            {
                return ExitCodes.Usage;
            }

            if (parse.GetValue(watch))
            {
                return await StatusWatch.RunAsync(
                    resolved,
                    parse.GetValue(ns) ?? "highlander",
                    parse.GetValue(fencingSchema) ?? "highlander",
                    parse.GetValue(names) ?? [],
                    parse.GetValue(json),
                    every ?? TimeSpan.FromSeconds(1)).ConfigureAwait(false);
            }

            IReadOnlyList<SingletonLeader> leaders;
            try
            {
                leaders = await LeaderDiscovery.ListAsync(
                    resolved.ConnectionString,
                    parse.GetValue(names) ?? [],
                    parse.GetValue(ns) ?? "highlander",
                    parse.GetValue(fencingSchema) ?? "highlander",
                    cancellationToken).ConfigureAwait(false);
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

            // Drains and step-downs running now (docs/operations.md): best-effort, nothing shown when they cannot be read.
            var holdOffs = await HoldOffLines.TryReadAsync(resolved.ConnectionString, parse.GetValue(fencingSchema) ?? "highlander", cancellationToken).ConfigureAwait(false);
            var holdOffNames = HoldOffLines.Names(leaders.Select(l => (l.Key, l.Name)), parse.GetValue(names) ?? [], parse.GetValue(ns) ?? "highlander");
            if (parse.GetValue(json))
            {
                WriteJson(leaders, Console.OpenStandardOutput(), holdOffs, holdOffNames);
            }
            else
            {
                WriteTable(leaders, resolved.Display);
                foreach (var line in HoldOffLines.Lines(holdOffs, holdOffNames))
                {
                    Console.Out.WriteLine(line);
                }
            }

            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>The JSON shape (stable: scripts parse it): documented in docs/cli.md.</summary>
    /// <remarks>
    /// Each singleton with <c>heldOff</c>: the hold-offs that keep a node from leading it now (step-downs on its
    /// key and drains), empty when none.
    /// </remarks>
    internal static void WriteJson(IReadOnlyList<SingletonLeader> leaders, Stream output, IReadOnlyList<HoldOff> holdOffs, IReadOnlyDictionary<long, string> names)
    {
        using var writer = new Utf8JsonWriter(output, new JsonWriterOptions { Indented = true });
        writer.WriteStartArray();
        foreach (var leader in leaders)
        {
            writer.WriteStartObject();
            writer.WriteNumber("key", leader.Key);
            WriteStringOrNull(writer, "name", leader.Name);
            WriteStringOrNull(writer, "namespace", leader.Namespace);
            writer.WritePropertyName("leader");
            WriteSession(writer, leader.Leader);
            WriteTimeOrNull(writer, "since", leader.Since);
            if (leader.FencingEpoch is { } epoch)
            {
                writer.WriteNumber("epoch", epoch);
            }
            else
            {
                writer.WriteNull("epoch");
            }

            WriteStringOrNull(writer, "endpoint", leader.Endpoint);
            WriteStringOrNull(writer, "host", leader.Host);
            writer.WriteStartArray("followers");
            foreach (var follower in leader.Followers)
            {
                WriteSession(writer, follower);
            }

            writer.WriteEndArray();
            writer.WriteStartArray("heldOff");
            foreach (var holdOff in holdOffs.Where(h => h.Key is null || h.Key == leader.Key))
            {
                HoldOffLines.WriteJson(writer, holdOff, names);
            }

            writer.WriteEndArray();
            writer.WriteEndObject();
        }

        writer.WriteEndArray();
        writer.Flush();
        output.Write("\n"u8);
        output.Flush();
    }

    private static void WriteTable(IReadOnlyList<SingletonLeader> leaders, string database)
    {
        if (leaders.Count == 0)
        {
            Console.Out.WriteLine($"No singleton is held in {database}.");
            return;
        }

        string[] headers = ["NAME", "NODE", "SINCE", "BACKEND PID", "CLIENT", "EPOCH", "ENDPOINT", "FOLLOWERS"];
        var rows = leaders.Select(leader =>
        {
            var since = leader.Since ?? leader.Leader.SessionStarted;
            return new[]
            {
                leader.Name ?? $"(key {leader.Key})",
                leader.Leader.NodeId ?? leader.Leader.ApplicationName ?? "?",
                since is null ? "-" : FormatTime(since.Value) + (leader.Since is null ? " (session)" : ""),
                leader.Leader.BackendPid.ToString(CultureInfo.InvariantCulture),
                // No address: a Unix socket, or a session whose details this role may not see (then no start time either).
                leader.Leader.ClientAddress ?? (leader.Leader.SessionStarted is null ? "-" : "local"),
                leader.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? "-",
                leader.Endpoint ?? "-",
                leader.Followers.Count == 0 ? "-" : string.Join(",", leader.Followers.Select(f => f.NodeId ?? f.ApplicationName ?? "?")),
            };
        }).ToList();

        if (!Console.IsOutputRedirected)
        {
            var table = new Table().Border(TableBorder.Rounded).Title($"Singletons held in {Markup.Escape(database)}");
            foreach (var header in headers)
            {
                table.AddColumn(new TableColumn(header.ToLowerInvariant()).NoWrap());
            }

            foreach (var row in rows)
            {
                table.AddRow(row.Select(Markup.Escape).ToArray());
            }

            AnsiConsole.Write(table);
            return;
        }

        // Not a terminal: plain aligned columns that scripts can cut (and --json for anything more).
        var widths = headers.Select((h, i) => Math.Max(h.Length, rows.Max(r => r[i].Length))).ToArray();
        foreach (var line in rows.Prepend(headers))
        {
            Console.Out.WriteLine(string.Join("  ", line.Select((cell, i) => i == line.Length - 1 ? cell : cell.PadRight(widths[i]))).TrimEnd());
        }
    }

    private static string FormatTime(DateTimeOffset time) => time.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);

    private static void WriteSession(Utf8JsonWriter writer, LeaderInfo session)
    {
        writer.WriteStartObject();
        WriteStringOrNull(writer, "node", session.NodeId);
        writer.WriteNumber("backendPid", session.BackendPid);
        WriteStringOrNull(writer, "applicationName", session.ApplicationName);
        WriteStringOrNull(writer, "clientAddress", session.ClientAddress);
        WriteTimeOrNull(writer, "sessionStarted", session.SessionStarted);
        writer.WriteEndObject();
    }

    private static void WriteStringOrNull(Utf8JsonWriter writer, string name, string? value)
    {
        if (value is null)
        {
            writer.WriteNull(name);
        }
        else
        {
            writer.WriteString(name, value);
        }
    }

    private static void WriteTimeOrNull(Utf8JsonWriter writer, string name, DateTimeOffset? value)
    {
        if (value is null)
        {
            writer.WriteNull(name);
        }
        else
        {
            writer.WriteString(name, value.Value);
        }
    }
}

/// <summary>The hold-offs <c>status</c> shows (drained nodes, held-off singletons): read best-effort, printed only when there are some.</summary>
internal static class HoldOffLines
{
    /// <summary>
    /// The running hold-offs in <paramref name="schema"/> on <paramref name="connection"/>; none when the control objects do
    /// not exist or cannot be read (no rights, a bad schema name): status never fails for them.
    /// </summary>
    public static async Task<IReadOnlyList<HoldOff>> TryReadAsync(NpgsqlConnection connection, string schema, CancellationToken cancellationToken)
    {
        try
        {
            return await ClusterControl.ReadHoldOffsAsync(connection, schema, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is PostgresException or ArgumentException)
        {
            return [];
        }
    }

    /// <summary>Like <see cref="TryReadAsync(NpgsqlConnection, string, CancellationToken)"/> on a connection of its own; none if the database cannot be reached.</summary>
    public static async Task<IReadOnlyList<HoldOff>> TryReadAsync(string connectionString, string schema, CancellationToken cancellationToken)
    {
        try
        {
            var connection = new NpgsqlConnection(connectionString);
            await using (connection.ConfigureAwait(false))
            {
                await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
                return await TryReadAsync(connection, schema, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException or IOException or ArgumentException)
        {
            return [];
        }
    }

    /// <summary>Key to name: the names known to the view, then the names given with <c>--name</c> (derived in <paramref name="namespace"/>).</summary>
    public static Dictionary<long, string> Names(IEnumerable<(long Key, string? Name)> known, IEnumerable<string> given, string? @namespace)
    {
        var names = new Dictionary<long, string>();
        foreach (var (key, name) in known)
        {
            if (name is not null)
            {
                names.TryAdd(key, name);
            }
        }

        if (@namespace is not null)
        {
            foreach (var name in given.Where(n => !string.IsNullOrWhiteSpace(n)))
            {
                names.TryAdd(SingletonKey.Derive(@namespace, name), name);
            }
        }

        return names;
    }

    /// <summary>The singleton a hold-off covers, by name where known, else its key; <see langword="null"/> for a drain.</summary>
    public static string? Singleton(HoldOff holdOff, IReadOnlyDictionary<long, string> names) =>
        holdOff.Key is not { } key ? null : names.GetValueOrDefault(key) ?? $"(key {key.ToString(CultureInfo.InvariantCulture)})";

    /// <summary>
    /// One line per hold-off, drains first: <c>Drained: web-3 until 2026-12-01 23:59:00 (by ops: deploy)</c>,
    /// <c>Held off: nightly on alpha until 2026-12-01 23:01:00 (by ops)</c>.
    /// </summary>
    public static IEnumerable<string> Lines(IReadOnlyList<HoldOff> holdOffs, IReadOnlyDictionary<long, string> names) =>
        holdOffs.Where(h => h.Key is null).Concat(holdOffs.Where(h => h.Key is not null)).Select(h =>
        {
            var who = $"(by {h.RequestedBy}{(string.IsNullOrEmpty(h.Reason) ? "" : ": " + h.Reason)})";
            return h.Key is null
                ? $"Drained: {h.NodeId} until {FormatTime(h.Until)} {who}"
                : $"Held off: {Singleton(h, names)} on {h.NodeId} until {FormatTime(h.Until)} {who}";
        });

    /// <summary>One hold-off as JSON (the shape is documented in docs/cli.md).</summary>
    public static void WriteJson(Utf8JsonWriter writer, HoldOff holdOff, IReadOnlyDictionary<long, string> names)
    {
        writer.WriteStartObject();
        writer.WriteString("node", holdOff.NodeId);
        writer.WriteString("kind", holdOff.Key is null ? "drain" : "stepdown");
        if (holdOff.Key is { } key)
        {
            writer.WriteNumber("key", key);
        }
        else
        {
            writer.WriteNull("key");
        }

        if (Singleton(holdOff, names) is { } name && holdOff.Key is { } k && names.ContainsKey(k))
        {
            writer.WriteString("name", name);
        }
        else
        {
            writer.WriteNull("name");
        }

        writer.WriteString("until", holdOff.Until);
        writer.WriteString("requestedBy", holdOff.RequestedBy);
        writer.WriteString("requestedAt", holdOff.RequestedAt);
        if (holdOff.Reason is null)
        {
            writer.WriteNull("reason");
        }
        else
        {
            writer.WriteString("reason", holdOff.Reason);
        }

        writer.WriteEndObject();
    }

    private static string FormatTime(DateTimeOffset time) => time.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
}

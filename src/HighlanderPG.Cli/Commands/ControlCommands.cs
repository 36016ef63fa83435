using System.CommandLine;
using System.Globalization;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Diagnostics;
using HighlanderPG.Discovery;
using HighlanderPG.Operations;
using Npgsql;
using Spectre.Console;

namespace HighlanderPG.Cli.Commands;

/// <summary>
/// <c>highlander stepdown</c>, <c>drain</c> and <c>undrain</c>: move singletons on purpose from any machine with
/// database access, through <see cref="ClusterControl"/> (authorized by EXECUTE on the SQL functions). See docs/cli.md.
/// </summary>
internal static class ControlCommands
{
    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    public static Command StepDown()
    {
        var name = new Argument<string>("NAME") { Description = "The singleton to move (hashed in --namespace)." };
        var node = new Option<string?>("--node") { Description = "The node expected to lead it (refused if another node does). Default: whoever leads it.", HelpName = "NODE" };
        var holdOff = CliOptions.Duration("--hold-off", "How long the node that steps down does not take it again (default 1m; 0s: it may contend at once).", max: TimeSpan.FromDays(3650));
        var (noWait, timeout, connection, ns, schema) = Common();
        var command = new Command("stepdown", "Make the node leading NAME stop its child, release the lock and tell the others; it does not take NAME again during the hold-off. Waits until NAME runs on another node.")
        {
            name, node, holdOff, noWait, timeout, connection, ns, schema,
        };
        command.SetAction(parse => RunAsync("stepdown", parse, connection, ns, schema, async (control, cancellationToken) =>
        {
            var hold = parse.GetValue(holdOff) ?? ClusterControl.DefaultStepDownHoldOff;
            var result = await control.StepDownAsync(parse.GetRequiredValue(name), parse.GetValue(node), hold, cancellationToken).ConfigureAwait(false);
            Console.Out.WriteLine($"{result.Name}: {result.NodeId} steps down; it does not take it again until {FormatTime(result.HoldOffUntil)} (hold-off {Durations.Format(hold)}).");
            return await WaitAsync("stepdown", control, result.NodeId, [result.Key], [result.Name], result.OtherNodes, parse.GetValue(noWait), parse.GetValue(timeout), cancellationToken).ConfigureAwait(false);
        }));
        return command;
    }

    public static Command Drain()
    {
        var node = new Option<string>("--node") { Description = "The node to drain (its id, as highlander status shows it).", HelpName = "NODE", Required = true };
        var holdOff = CliOptions.Duration("--hold-off", "How long the node takes no singleton (default 10m; highlander undrain ends it sooner). A restart of the node does not end it.", max: TimeSpan.FromDays(3650));
        var (noWait, timeout, connection, ns, schema) = Common();
        var command = new Command("drain", "Make a node step down from every singleton it leads (e.g. before a deploy) and take none during the hold-off; it keeps following. Waits until each runs on another node.")
        {
            node, holdOff, noWait, timeout, connection, ns, schema,
        };
        command.SetAction(parse => RunAsync("drain", parse, connection, ns, schema, async (control, cancellationToken) =>
        {
            var hold = parse.GetValue(holdOff) ?? ClusterControl.DefaultDrainHoldOff;
            var result = await control.DrainAsync(parse.GetRequiredValue(node), hold, cancellationToken).ConfigureAwait(false);
            Console.Out.WriteLine($"{result.NodeId} is drained until {FormatTime(result.HoldOffUntil)} (hold-off {Durations.Format(hold)}): it steps down from {result.Singletons.Count} singleton(s).");
            return await WaitAsync("drain", control, result.NodeId, [.. result.Singletons.Select(s => s.Key)], [.. result.Singletons.Select(s => s.Name).OfType<string>()], result.OtherNodes, parse.GetValue(noWait), parse.GetValue(timeout), cancellationToken).ConfigureAwait(false);
        }));
        return command;
    }

    public static Command Undrain()
    {
        var node = new Option<string>("--node") { Description = "The node whose drain and step-down hold-offs end now.", HelpName = "NODE", Required = true };
        var (_, _, connection, ns, schema) = Common();
        var command = new Command("undrain", "End a node's drain and step-down hold-offs at once: it may take singletons again.")
        {
            node, connection, ns, schema,
        };
        command.SetAction(parse => RunAsync("undrain", parse, connection, ns, schema, async (control, cancellationToken) =>
        {
            var id = parse.GetRequiredValue(node);
            var ended = await control.UndrainAsync(id, cancellationToken).ConfigureAwait(false);
            Console.Out.WriteLine(ended == 0
                ? $"{id} had no hold-off running: nothing to end."
                : $"{id}: {ended} hold-off(s) ended; it may take singletons again.");
            return ExitCodes.Ok;
        }));
        return command;
    }

    private static (Option<bool> NoWait, Option<TimeSpan?> Timeout, Option<string?> Connection, Option<string?> Namespace, Option<string?> Schema) Common()
    {
        var timeout = CliOptions.Duration(
            "--timeout",
            "How long to wait for the singletons to run elsewhere (default 60s); then exit 1.",
            notPositive: "--timeout must be positive (e.g. --timeout 2m); to return without waiting, use --no-wait.");
        return (
            new Option<bool>("--no-wait") { Description = "Return once the request is recorded, without waiting for the singletons to run elsewhere." },
            timeout,
            CliOptions.Connection(),
            CliOptions.Namespace(),
            new Option<string?>("--fencing-schema") { Description = "Schema of the control functions: the nodes' fencing schema (default highlander).", HelpName = "SCHEMA" });
    }

    private static async Task<int> RunAsync(
        string commandName,
        ParseResult parse,
        Option<string?> connection,
        Option<string?> ns,
        Option<string?> schema,
        Func<ClusterControl, CancellationToken, Task<int>> action)
    {
        // Ctrl+C or SIGTERM ends the wait with exit 5 (the request, once made, stands).
        using var signals = new StopSignals();
        var cancellationToken = signals.Token;
        var resolved = RunCommand.ResolveConnection(parse.GetValue(connection), commandName);
        if (resolved is null)
        {
            return ExitCodes.Usage;
        }

        ClusterControl control;
        try
        {
            control = new ClusterControl(resolved.ConnectionString, parse.GetValue(ns) ?? "highlander", parse.GetValue(schema) ?? "highlander");
        }
        catch (ArgumentException ex)
        {
            Say.Error(commandName, WithoutParameter(ex));
            return ExitCodes.Usage;
        }

        await using (control.ConfigureAwait(false))
        {
            try
            {
                return await action(control, cancellationToken).ConfigureAwait(false);
            }
            catch (ArgumentException ex)
            {
                Say.Error(commandName, WithoutParameter(ex));
                return ExitCodes.Usage;
            }
            catch (ClusterControlException ex) when (ex.SqlState is not "42501")
            {
                // Nobody leads it, another node does, no such node, a bad argument: nothing was done; the message says what to fix.
                Say.Error(commandName, ex.Message);
                return ExitCodes.Usage;
            }
            catch (ClusterControlException ex)
            {
                Say.Error(commandName, ex.Message);
                return ExitCodes.Failure;
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                Say.Error(commandName, "interrupted.");
                return ExitCodes.Interrupted;
            }
            catch (Exception ex) when (ex is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException or IOException)
            {
                Say.Error(commandName, $"cannot query {resolved.Display}: {ex.Message}");
                return ExitCodes.CannotConnect;
            }
        }
    }

    /// <summary>Waits until <paramref name="keys"/> run on another node than <paramref name="from"/>, and prints where each went.</summary>
    private static async Task<int> WaitAsync(
        string commandName,
        ClusterControl control,
        string from,
        IReadOnlyCollection<long> keys,
        IReadOnlyCollection<string> names,
        IReadOnlyList<string> otherNodes,
        bool noWait,
        TimeSpan? timeout,
        CancellationToken cancellationToken)
    {
        if (keys.Count == 0)
        {
            return ExitCodes.Ok;
        }

        if (otherNodes.Count == 0)
        {
            Console.Error.WriteLine($"highlander {commandName}: warning: no other node is connected: what {from} led runs nowhere until the hold-off ends (or highlander undrain --node {from}).");
            return ExitCodes.Ok;
        }

        await WarnWhenEveryOtherNodeIsHeldOffAsync(commandName, control, keys, names, otherNodes, cancellationToken).ConfigureAwait(false);
        if (noWait)
        {
            return ExitCodes.Ok;
        }

        var limit = timeout ?? DefaultTimeout;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(limit);
        IReadOnlyList<ClusterSingleton> now;
        var moved = true;
        try
        {
            now = await control.WaitMovedAsync(from, keys, names, cancellationToken: cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            moved = false;
            now = await control.ReadMovedAsync(keys, names, cancellationToken).ConfigureAwait(false);
        }

        WriteMoves(from, now);
        if (!moved)
        {
            Say.Error(commandName, $"timed out after {Durations.Format(limit)}: not every singleton runs on another node yet (the request stands; see highlander status).");
            return ExitCodes.Failure;
        }

        return ExitCodes.Ok;
    }

    /// <summary>
    /// Warns when every other live node is held off from a singleton too (drained, or stepped down from it earlier): it then
    /// runs nowhere until the first of those hold-offs ends, which a wait would otherwise only show as a silent wait.
    /// </summary>
    private static async Task WarnWhenEveryOtherNodeIsHeldOffAsync(string commandName, ClusterControl control, IReadOnlyCollection<long> keys, IReadOnlyCollection<string> names, IReadOnlyList<string> otherNodes, CancellationToken cancellationToken)
    {
        IReadOnlyList<HoldOff> holdOffs;
        try
        {
            holdOffs = await control.GetHoldOffsAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (NpgsqlException)
        {
            return; // only a warning: the request itself stands
        }

        // Names line up with keys when every singleton's name is known (a drain may include some only known by key).
        var keyNames = keys.Count == names.Count ? keys.Zip(names).ToDictionary(p => p.First, p => p.Second) : [];
        foreach (var key in keys)
        {
            var blocking = otherNodes
                .Select(node => holdOffs.Where(h => h.NodeId == node && (h.Key is null || h.Key == key)).MaxBy(h => h.Until))
                .ToList();
            if (blocking.All(h => h is not null))
            {
                var first = blocking.Min(h => h!.Until);
                var who = string.Join(", ", blocking.Select(h => $"{h!.NodeId} until {h.Until.UtcDateTime.ToString("HH:mm:ss", CultureInfo.InvariantCulture)} UTC"));
                var name = keyNames.TryGetValue(key, out var n) ? n : $"key {key.ToString(CultureInfo.InvariantCulture)}";
                Console.Error.WriteLine($"highlander {commandName}: warning: every other node is held off from {name} ({who}): it runs nowhere until {first.UtcDateTime.ToString("HH:mm:ss", CultureInfo.InvariantCulture)} UTC (or highlander undrain --node NODE).");
            }
        }
    }

    private static void WriteMoves(string from, IReadOnlyList<ClusterSingleton> singletons)
    {
        var rows = singletons.Select(s => new[]
        {
            s.Name ?? $"(key {s.Key.ToString(CultureInfo.InvariantCulture)})",
            from,
            s.Leader?.NodeId ?? "nobody yet",
            s.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? "-",
        }).ToList();
        if (!Console.IsOutputRedirected)
        {
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var header in new[] { "singleton", "from", "now on", "epoch" })
            {
                table.AddColumn(new TableColumn(header).NoWrap());
            }

            foreach (var row in rows)
            {
                table.AddRow(row.Select(Markup.Escape).ToArray());
            }

            AnsiConsole.Write(table);
            return;
        }

        foreach (var row in rows)
        {
            Console.Out.WriteLine($"{row[0]}: {row[1]} -> {row[2]}");
        }
    }

    private static string FormatTime(DateTimeOffset time) => time.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);

    /// <summary>The message without .NET's "(Parameter 'name')": the flags are the user's words here.</summary>
    private static string WithoutParameter(ArgumentException ex) =>
        ex.ParamName is { } parameter ? ex.Message.Replace($" (Parameter '{parameter}')", "", StringComparison.Ordinal) : ex.Message;
}

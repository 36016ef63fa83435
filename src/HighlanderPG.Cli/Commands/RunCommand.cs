using System.CommandLine;
using System.CommandLine.Parsing;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Diagnostics;
using HighlanderPG.Cli.Running;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Commands;

/// <summary><c>highlander run</c>: run a command as a cluster singleton (service mode), or once (cron mode).</summary>
internal static class RunCommand
{
    private static readonly string[] RestartValues = ["always", "on-failure", "never"];
    private static readonly string[] LogLevels = ["trace", "debug", "information", "warning", "error", "critical", "none"];

    /// <param name="commandTokens">What followed <c>--</c> on the command line: the command and its arguments.</param>
    public static Command Create(IReadOnlyList<string> commandTokens)
    {
        var name = new Option<string>("--name") { Description = "The singleton's cluster-wide name (its lock key derives from it).", HelpName = "NAME", Required = true };
        var connection = CliOptions.Connection();
        var ns = CliOptions.Namespace();
        var nodeId = new Option<string?>("--node-id") { Description = "This node's id, shown to others (default: {machine}:{pid}).", HelpName = "ID" };
        var lease = CliOptions.Duration("--lease", "The server ends a silent node's session, freeing its lock, after this long (default 15s).");
        var heartbeat = CliOptions.Duration("--heartbeat", "Lease renewal interval, at most a third of the lease (default 2s).");
        var stopTimeout = CliOptions.Duration("--stop-timeout", "Time the command gets between SIGTERM and SIGKILL (default 5s).");
        var safetyMargin = CliOptions.Duration("--safety-margin", "Subtracted from the lease on this node's clock (default 1s).");
        var lockDelay = CliOptions.Duration("--lock-delay", "After a server restart, no lock is taken until the server has been up this long (default: the lease).");
        var waitSlice = CliOptions.Duration("--wait-slice", "Bound of a follower's blocking wait for the lock, shorter than the lease (default: the library's, 5s or a third of the lease if that is shorter).");
        var restart = new Option<string?>("--restart") { Description = "When the command exits: always (default), on-failure (exit 0 is final), never.", HelpName = "POLICY" };
        restart.AcceptOnlyFromAmong(RestartValues);
        var maxRestarts = new Option<int?>("--max-restarts") { Description = "Restart intensity: at most this many restarts within --restart-window (default 5); more ends highlander with exit code 1.", HelpName = "N" };
        var restartWindow = CliOptions.Duration("--restart-window", "The window of --max-restarts (default 1m).");
        var restartDelay = CliOptions.Duration("--restart-delay", "How long this node waits after the command exited before contending again (default 1s).");
        var fencing = new Option<bool>("--fencing") { Description = "Fencing tokens: the command gets HIGHLANDER_FENCING_TOKEN, strictly increasing per acquisition (creates the highlander.leases table)." };
        var fencingSchema = new Option<string?>("--fencing-schema") { Description = "Schema of the fencing table (default highlander).", HelpName = "SCHEMA" };
        var endpoint = new Option<string?>("--endpoint") { Description = "What this node publishes while it leads (e.g. a URL); needs --fencing; shown by status.", HelpName = "TEXT" };
        var allowWeak = new Option<bool>("--allow-without-server-lease") { Description = "Accept PostgreSQL older than 14 (no idle_session_timeout): a documented weaker mode." };
        var allowPooler = new Option<bool>("--allow-session-pooler") { Description = "Confirm that a pooler in between runs in session mode." };
        var once = new Option<bool>("--once") { Description = "Cron mode: run the command once if this node gets the name, then release it; exit with the command's code (3 if another node holds the name)." };
        var wait = CliOptions.Duration("--wait", "With --once: how long to wait for a name held elsewhere (default 0s: give up at once).");
        var logLevel = new Option<string?>("--log-level") { Description = "trace, debug, information (default), warning (default with --once), error, critical or none. Logs go to stderr.", HelpName = "LEVEL" };
        logLevel.AcceptOnlyFromAmong(LogLevels);
        var logFormat = new Option<string?>("--log-format") { Description = "text (default: one line per message) or json (one JSON object per line, with the event id and the message's parameters; see docs/cli.md).", HelpName = "FORMAT" };
        logFormat.AcceptOnlyFromAmong("text", "json");

        var command = new Command("run", "Run COMMAND while this node holds NAME, so on one node at a time. Usage: highlander run --name NAME [options] -- COMMAND [ARGS...]")
        {
            name, connection, ns, nodeId, lease, heartbeat, stopTimeout, safetyMargin, lockDelay, waitSlice, restart, maxRestarts, restartWindow, restartDelay,
            fencing, fencingSchema, endpoint, allowWeak, allowPooler, once, wait, logLevel, logFormat,
        };
        command.Validators.Add(result =>
        {
            if (commandTokens.Count == 0)
            {
                result.AddError("missing COMMAND: give the command to run after --, e.g. highlander run --name nightly-report -- ./report.sh --full");
            }

            if (result.GetResult(name) is not null && string.IsNullOrWhiteSpace(result.GetValue(name)))
            {
                result.AddError("--name must not be blank: the lock key derives from it, so every node must give the same, stable name.");
            }

            if (result.GetResult(wait) is not null && !result.GetValue(once))
            {
                result.AddError("--wait only applies with --once.");
            }

            if (result.GetValue(once))
            {
                foreach (var restartOption in new Option[] { restart, maxRestarts, restartWindow, restartDelay })
                {
                    if (result.GetResult(restartOption) is not null)
                    {
                        result.AddError($"{restartOption.Name} does not apply with --once (the command runs once).");
                    }
                }
            }
        });

        command.SetAction((parse, cancellationToken) =>
        {
            var resolved = ResolveConnection(parse.GetValue(connection), "run");
            if (resolved is null)
            {
                return Task.FromResult(ExitCodes.Usage);
            }

            var isOnce = parse.GetValue(once);
            var settings = new RunSettings
            {
                Name = parse.GetRequiredValue(name),
                Command = commandTokens,
                ConnectionString = resolved.ConnectionString,
                Namespace = parse.GetValue(ns),
                NodeId = parse.GetValue(nodeId),
                Lease = parse.GetValue(lease),
                Heartbeat = parse.GetValue(heartbeat),
                StopTimeout = parse.GetValue(stopTimeout),
                SafetyMargin = parse.GetValue(safetyMargin),
                LockDelay = parse.GetValue(lockDelay),
                WaitSlice = parse.GetValue(waitSlice),
                Restart = parse.GetValue(restart) switch
                {
                    "always" => RestartPolicy.Always,
                    "on-failure" => RestartPolicy.OnFailure,
                    "never" => RestartPolicy.Never,
                    _ => null,
                },
                MaxRestarts = parse.GetValue(maxRestarts),
                RestartWindow = parse.GetValue(restartWindow),
                RestartDelay = parse.GetValue(restartDelay),
                Fencing = parse.GetValue(fencing),
                FencingSchema = parse.GetValue(fencingSchema),
                Endpoint = parse.GetValue(endpoint),
                AllowWithoutServerLease = parse.GetValue(allowWeak),
                AllowSessionPooler = parse.GetValue(allowPooler),
                Once = isOnce,
                Wait = parse.GetValue(wait) ?? TimeSpan.Zero,
                LogLevel = parse.GetValue(logLevel) is { } level ? Enum.Parse<LogLevel>(level, ignoreCase: true) : isOnce ? LogLevel.Warning : LogLevel.Information,
                LogFormat = parse.GetValue(logFormat) == "json" ? LogFormat.Json : LogFormat.Text,
            };
            return RunHost.RunAsync(settings, resolved, cancellationToken);
        });
        return command;
    }

    /// <summary>Resolves the connection for <paramref name="commandName"/>, printing why not when it cannot.</summary>
    internal static ResolvedConnection? ResolveConnection(string? option, string commandName, bool usePgVariables = true)
    {
        ResolvedConnection? resolved;
        try
        {
            resolved = ConnectionResolver.Resolve(option, Environment.GetEnvironmentVariables(), usePgVariables);
        }
        catch (FormatException ex)
        {
            Diagnostics.Say.Error(commandName, ex.Message);
            return null;
        }

        if (resolved is null)
        {
            Diagnostics.Say.Error(commandName, ConnectionResolver.NoConnectionMessage);
            return null;
        }

        if (ConnectionResolver.Validate(resolved.ConnectionString) is { } problem)
        {
            Diagnostics.Say.Error(commandName, $"{problem} (from {resolved.Source})");
            return null;
        }

        return resolved;
    }
}

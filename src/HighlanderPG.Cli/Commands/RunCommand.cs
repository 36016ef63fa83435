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
    private static readonly string[] StrategyValues = ["one-for-one", "one-for-all", "rest-for-one"];
    private static readonly string[] LogLevels = ["trace", "debug", "information", "warning", "error", "critical", "none"];

    /// <param name="commandTokens">What followed <c>--</c> on the command line: the command and its arguments.</param>
    /// <param name="hasSeparator">Whether the command line had <c>--</c> (with or without a command after it).</param>
    public static Command Create(IReadOnlyList<string> commandTokens, bool hasSeparator = false)
    {
        var name = new Option<string>("--name") { Description = "The singleton's cluster-wide name (its lock key derives from it).", HelpName = "NAME", Required = true };
        var connection = CliOptions.Connection();
        var ns = CliOptions.Namespace();
        var nodeId = new Option<string?>("--node-id") { Description = "This node's id, shown to others (default: {machine}:{pid}).", HelpName = "ID" };
        var lease = CliOptions.Duration("--lease", "The server ends a silent node's session, freeing its lock, after this long (default 15s).");
        var heartbeat = CliOptions.Duration("--heartbeat", "Lease renewal interval, at most a third of the lease (default 2s).");
        var stopTimeout = CliOptions.Duration("--stop-timeout", "Time the command (with --procfile: the whole group, members stopped in reverse order) gets between SIGTERM and SIGKILL (default 5s).");
        var safetyMargin = CliOptions.Duration("--safety-margin", "Subtracted from the lease on this node's clock (default 1s).");
        var lockDelay = CliOptions.Duration("--lock-delay", "After a server restart, no lock is taken until the server has been up this long (default: the lease).");
        var waitSlice = CliOptions.Duration("--wait-slice", "Bound of a follower's blocking wait for the lock, shorter than the lease (default: the library's, 5s or a third of the lease if that is shorter).");
        var restart = new Option<string?>("--restart") { Description = "When the command exits: always (default), on-failure (exit 0 is final), never. With --procfile: every member's restart policy (restarts keep the lock).", HelpName = "POLICY" };
        restart.AcceptOnlyFromAmong(RestartValues);
        var maxRestarts = CliOptions.WholeNumber("--max-restarts", "Restart intensity: at most this many restarts within --restart-window (default 5); more ends highlander with exit code 1. With --procfile: the group's restarts.", "5");
        var restartWindow = CliOptions.Duration("--restart-window", "The window of --max-restarts (default 1m).");
        var restartDelay = CliOptions.Duration("--restart-delay", "How long this node waits after the command exited before contending again (default 1s). With --procfile: how long before members restart, holding the lock.");
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
        var procfile = new Option<string?>("--procfile") { Description = "Run a group instead of one COMMAND: one member per line, 'name: command line' (run by /bin/sh -c in the file's directory), started in order, stopped in reverse (see docs/cli.md).", HelpName = "FILE" };
        var strategy = new Option<string?>("--strategy") { Description = "With --procfile: which members restart when one exits: one-for-one (default: only it), one-for-all (all of them), rest-for-one (it and those after it in the file).", HelpName = "STRATEGY" };
        strategy.AcceptOnlyFromAmong(StrategyValues);
        var memberRestart = new Option<string[]>("--member-restart") { Description = "With --procfile: a member's own restart policy, MEMBER=always|on-failure|never (repeatable, or comma-separated); the others follow --restart.", HelpName = "MEMBER=POLICY", AllowMultipleArgumentsPerToken = false };
        var noPrefix = new Option<bool>("--no-prefix") { Description = "With --procfile: pass the members' output through as is, instead of prefixing each line with 'member | '." };

        var command = new Command("run", "Run COMMAND (or the group of a Procfile) while this node holds NAME, so on one node at a time.")
        {
            name, connection, ns, nodeId, lease, heartbeat, stopTimeout, safetyMargin, lockDelay, waitSlice, restart, maxRestarts, restartWindow, restartDelay,
            fencing, fencingSchema, endpoint, allowWeak, allowPooler, once, wait, logLevel, logFormat, procfile, strategy, memberRestart, noPrefix,
        };
        command.Validators.Add(result =>
        {
            var isGroup = result.GetResult(procfile) is not null;
            if (isGroup && (commandTokens.Count > 0 || hasSeparator))
            {
                result.AddError("--procfile and '-- COMMAND' do not go together: run either one COMMAND, or the members of the procfile (add COMMAND to the procfile as a member of its own)");
            }
            else if (commandTokens.Count == 0 && !isGroup)
            {
                result.AddError("missing COMMAND: give the command to run after --, e.g. highlander run --name nightly-report -- ./report.sh --full (or a group: --procfile FILE)");
            }

            if (isGroup && string.IsNullOrWhiteSpace(SafeValue(result, procfile)))
            {
                result.AddError("--procfile needs a file name, e.g. --procfile ./Procfile");
            }

            if (isGroup && SafeValue(result, once))
            {
                result.AddError("--once does not apply with --procfile: a group runs as a service (its members are supervised and restarted); run a one-off job as highlander run --once --name NAME -- COMMAND");
            }

            if (!isGroup)
            {
                foreach (var groupOption in new Option[] { strategy, memberRestart, noPrefix })
                {
                    if (result.GetResult(groupOption) is not null)
                    {
                        result.AddError($"{groupOption.Name} only applies with --procfile.");
                    }
                }
            }

            if (result.GetResult(name) is not null && string.IsNullOrWhiteSpace(SafeValue(result, name)) && result.GetResult(name)!.Tokens.Count == 1)
            {
                result.AddError("--name must not be blank: the lock key derives from it, so every node must give the same, stable name.");
            }

            if (result.GetResult(wait) is not null && !SafeValue(result, once))
            {
                result.AddError("--wait only applies with --once.");
            }

            if (SafeValue(result, once))
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
            // The group's file is read and checked first: a bad procfile is a usage error, before any connection or lock.
            GroupSettings? group = null;
            if (parse.GetValue(procfile) is { } procfilePath)
            {
                group = ReadGroup(procfilePath, parse.GetValue(strategy), parse.GetValue(memberRestart) ?? [], !parse.GetValue(noPrefix));
                if (group is null)
                {
                    return Task.FromResult(ExitCodes.Usage);
                }
            }

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
                Group = group,
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

    /// <summary>Reads the procfile and the group's options, printing what is wrong (and returning null) when they cannot be used.</summary>
    /// <summary>
    /// The option's value for a validator, or the default when the parser could make none (the option given twice, or
    /// without its argument): the parser reports that itself, and a validator must not throw instead of it.
    /// </summary>
    private static T? SafeValue<T>(CommandResult result, Option<T> option)
    {
        try
        {
            return result.GetValue(option);
        }
        catch (InvalidOperationException)
        {
            return default;
        }
    }

    internal static GroupSettings? ReadGroup(string path, string? strategy, IReadOnlyList<string> memberRestarts, bool prefixOutput)
    {
        IReadOnlyList<GroupMember> members;
        try
        {
            members = Procfile.Read(path);
        }
        catch (ProcfileException ex)
        {
            Say.Error("run", ex.Message);
            return null;
        }

        var restarts = new Dictionary<string, RestartPolicy>(StringComparer.Ordinal);
        foreach (var item in memberRestarts.SelectMany(v => v.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)))
        {
            var equals = item.IndexOf('=', StringComparison.Ordinal);
            var member = equals < 0 ? item : item[..equals];
            var policy = equals < 0 ? null : item[(equals + 1)..] switch
            {
                "always" => RestartPolicy.Always,
                "on-failure" => RestartPolicy.OnFailure,
                "never" => (RestartPolicy?)RestartPolicy.Never,
                _ => null,
            };
            if (policy is null)
            {
                Say.Error("run", $"--member-restart: '{item}' is not MEMBER=POLICY with POLICY always, on-failure or never (e.g. --member-restart migrate=never)");
                return null;
            }

            if (!members.Any(m => m.Name == member))
            {
                Say.Error("run", $"--member-restart: {path} has no member '{member}' (its members: {string.Join(", ", members.Select(m => m.Name))})");
                return null;
            }

            if (!restarts.TryAdd(member, policy.Value))
            {
                Say.Error("run", $"--member-restart: member '{member}' is given twice");
                return null;
            }
        }

        return new GroupSettings
        {
            Procfile = path,
            Members = members,
            WorkingDirectory = Path.GetDirectoryName(Path.GetFullPath(path)) ?? Environment.CurrentDirectory,
            Strategy = strategy switch
            {
                "one-for-all" => GroupStrategy.OneForAll,
                "rest-for-one" => GroupStrategy.RestForOne,
                _ => GroupStrategy.OneForOne,
            },
            MemberRestarts = restarts,
            PrefixOutput = prefixOutput,
        };
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

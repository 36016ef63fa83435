using System.CommandLine;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Demo;

namespace HighlanderPG.Cli.Commands;

/// <summary><c>highlander demo</c>: three nodes, five faults, and a verdict.</summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var duration = CliOptions.Duration("--duration", "Upper bound of the whole demo; faults that no longer fit are skipped (default 2m).");
        var connection = new Option<string?>("--connection")
        {
            Description = $"Use this PostgreSQL instead of a throwaway one (also ${ConnectionResolver.EnvironmentVariable}; PG* variables are ignored here). The server-restart fault is then skipped.",
            HelpName = "CS",
        };
        var plain = new Option<bool>("--plain") { Description = "Plain lines instead of the live view, even on a terminal." };
        var command = new Command("demo", "See it work: a throwaway PostgreSQL, three nodes as separate processes, faults injected in turn (graceful stop, kill -9, cut-off, killed backend, server restart), and a verdict.")
        {
            duration, connection, plain,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var limit = parse.GetValue(duration) ?? TimeSpan.FromMinutes(2);
            if (limit < TimeSpan.FromSeconds(10))
            {
                Diagnostics.Say.Error("demo", $"--duration {Durations.Format(limit)} is too short: the setup alone takes several seconds (use at least 10s; the full demo needs about 1m)");
                return ExitCodes.Usage;
            }

            ResolvedConnection? external = null;
            if (parse.GetValue(connection) is not null || Environment.GetEnvironmentVariable(ConnectionResolver.EnvironmentVariable) is { Length: > 0 })
            {
                external = RunCommand.ResolveConnection(parse.GetValue(connection), "demo", usePgVariables: false);
                if (external is null)
                {
                    return ExitCodes.Usage;
                }
            }

            using var interrupted = new StopSignals(); // clean up first: the nodes, the proxies, the server
            var live = !parse.GetValue(plain) && !Console.IsOutputRedirected && Spectre.Console.AnsiConsole.Profile.Capabilities.Interactive;
            return await new DemoRunner(limit, external, live).RunAsync(interrupted.Token).ConfigureAwait(false);
        });
        return command;
    }
}

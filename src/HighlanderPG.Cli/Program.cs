using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using HighlanderPG.Cli.Commands;

namespace HighlanderPG.Cli;

/// <summary>The <c>highlander</c> command line.</summary>
internal static class Program
{
    public static async Task<int> Main(string[] args)
    {
        // Everything after the first "--" is the command that `run` runs, verbatim: it is never parsed as highlander's own
        // options, and nothing before "--" is taken for the command (so a mistyped option is an error, not a program name).
        var separator = Array.IndexOf(args, "--");
        var own = separator < 0 ? args : args[..separator];
        var command = separator < 0 ? [] : args[(separator + 1)..];
        var root = CreateRootCommand(command, separator >= 0);
        // No response files: arguments may start with '@'.
        var parse = root.Parse(own, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (parse.Errors.Count > 0 && parse.Action is ParseErrorAction or null)
        {
            var commandName = parse.CommandResult.Command is RootCommand ? "highlander" : "highlander " + parse.CommandResult.Command.Name;
            foreach (var error in parse.Errors)
            {
                await Console.Error.WriteLineAsync($"{commandName}: {error.Message}").ConfigureAwait(false);
            }

            if (separator < 0 && parse.CommandResult.Command.Name == "run" && parse.UnmatchedTokens.Count > 0 && !own.Contains("--procfile"))
            {
                await Console.Error.WriteLineAsync("The command goes after --: highlander run --name NAME [options] -- COMMAND [ARGS...]").ConfigureAwait(false);
            }

            await Console.Error.WriteLineAsync($"See '{commandName} --help'.").ConfigureAwait(false);
            return ExitCodes.Usage;
        }

        if (parse.Action is HelpAction && parse.CommandResult.Command.Name == "run")
        {
            await Console.Out.WriteAsync(RunHelp(parse)).ConfigureAwait(false);
            return 0;
        }

        // Signals are handled by each command (the run host steps down gracefully; the demo cleans up), not by the parser.
        return await parse.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null }).ConfigureAwait(false);
    }

    /// <summary>
    /// <c>run --help</c> with its real usage lines: the parser's own shows <c>highlander run [options]</c>, which leaves out
    /// <c>--name</c> and the command after <c>--</c> (kept out of the parser on purpose, see <see cref="Main"/>).
    /// </summary>
    internal static string RunHelp(ParseResult parse)
    {
        using var help = new StringWriter();
        parse.Invoke(new InvocationConfiguration { Output = help });
        var newLine = Environment.NewLine;
        return help.ToString().Replace(
            $"{newLine}  highlander run [options]{newLine}",
            $"{newLine}  highlander run --name NAME [options] -- COMMAND [ARGS...]{newLine}  highlander run --name NAME --procfile FILE [options]{newLine}",
            StringComparison.Ordinal);
    }

    internal static RootCommand CreateRootCommand(IReadOnlyList<string> command, bool hasSeparator)
    {
        var root = new RootCommand("highlander: run any command on exactly one node of a cluster, with a PostgreSQL advisory lock and a server-enforced lease.")
        {
            RunCommand.Create(command, hasSeparator),
            StatusCommand.Create(),
            DemoCommand.Create(),
            ControlCommands.StepDown(),
            ControlCommands.Drain(),
            ControlCommands.Undrain(),
        };
        foreach (var subcommand in root.Subcommands.Where(c => c.Name != "run"))
        {
            subcommand.Validators.Add(result =>
            {
                if (hasSeparator)
                {
                    result.AddError("'--' and a command only go with 'run'.");
                }
            });
        }

        return root;
    }
}

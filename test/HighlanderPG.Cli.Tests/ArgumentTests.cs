using HighlanderPG.Cli.Tests.Infrastructure;

namespace HighlanderPG.Cli.Tests;

/// <summary>Bad arguments: each gives a clear message and exit code 2, before anything runs (no server needed).</summary>
public sealed class ArgumentTests
{
    private const string Unreachable = "Host=127.0.0.1;Port=1;Username=u;Password=pw-not-shown;Database=d";

    [Theory]
    [InlineData(new[] { "run", "--name", "x", "--bogus", "--", "true" }, "Unrecognized command or argument '--bogus'")]
    [InlineData(new[] { "run", "--name", "x", "--lease", "1.5s", "--", "true" }, "--lease: '1.5s' is not a duration")]
    [InlineData(new[] { "run", "--name", "x", "--lease", "10", "--", "true" }, "'10' has no unit")]
    [InlineData(new[] { "run", "--name", "x", "--stop-timeout", "5 s", "--", "true" }, "--stop-timeout: '5 s' is not a duration")]
    [InlineData(new[] { "run", "--name", "x" }, "missing COMMAND")]
    [InlineData(new[] { "run", "--name", "x", "ls", "-la" }, "The command goes after --")]
    [InlineData(new[] { "status", "--", "ls" }, "'--' and a command only go with 'run'")]
    [InlineData(new[] { "run", "--name", "x", "--" }, "missing COMMAND")]
    [InlineData(new[] { "run", "--", "true" }, "Option '--name' is required")]
    [InlineData(new[] { "run", "--name", " ", "--", "true" }, "--name must not be blank")]
    [InlineData(new[] { "run", "--name", "x", "--wait", "5s", "--", "true" }, "--wait only applies with --once")]
    [InlineData(new[] { "run", "--name", "x", "--once", "--restart", "never", "--", "true" }, "--restart does not apply with --once")]
    [InlineData(new[] { "run", "--name", "x", "--restart", "sometimes", "--", "true" }, "sometimes")]
    [InlineData(new[] { "demo", "--duration", "5s" }, "too short")]
    [InlineData(new[] { "run", "--name", "a", "--name", "b", "--", "true" }, "Option '--name' expects a single argument but 2 were provided")]
    [InlineData(new[] { "run", "--once", "--name", "v", "--procfile" }, "Required argument missing for option: '--procfile'")]
    [InlineData(new[] { "run", "--once", "--name", "x", "--endpoint", "http://x", "--", "true" }, "Endpoint needs Fencing = true")]
    [InlineData(new[] { "run", "--name", "x", "--max-restarts", "abc", "--", "true" }, "--max-restarts: 'abc' is not a whole number")]
    [InlineData(new[] { "run", "--name", "x", "--lease", "1S", "--", "true" }, "units are lowercase")]
    [InlineData(new[] { "run", "--once", "--name", "a\u0001b", "--", "true" }, "Cluster singleton name 'a\\u0001b' must be 1 to 200 characters, not blank, without control characters (it has 3). (Name is --name)")]
    [InlineData(new[] { "status", "--namespace", " " }, "--namespace must not be blank")]
    [InlineData(new[] { "status", "--name", "" }, "--name must not be blank")]
    [InlineData(new string[0], "Required command was not provided")]
    [InlineData(new[] { "run", "--name", "x", "--connection", "", "--", "true" }, "--connection must not be blank")]
    [InlineData(new[] { "status", "--connection", " " }, "--connection must not be blank")]
    [InlineData(new[] { "stepdown", "x", "--connection", "" }, "--connection must not be blank")]
    [InlineData(new[] { "stepdown", "x", "--timeout", "0s" }, "--timeout must be positive")]
    [InlineData(new[] { "drain", "--node", "n", "--timeout", "1200h" }, "--timeout: '1200h' is too long: at most 1176h")]
    [InlineData(new[] { "run", "--name", "x", "--restart-delay", "1200h", "--", "true" }, "--restart-delay: '1200h' is too long")]
    [InlineData(new[] { "status", "--watch", "--interval", "1200h" }, "--interval: '1200h' is too long")]
    [InlineData(new[] { "run", "--name", "x", "--stop-timeout", "256204778h", "--", "true" }, "--stop-timeout: '256204778h' is too long")]
    [InlineData(new[] { "run", "--name", "x", "--heartbeat", "100h", "--", "true" }, "HeartbeatInterval is 4.04:00:00; it must be at most 1 day")]
    [InlineData(new[] { "status", "--connection", "Host=db;Username=u;Target Session Attributes=primary" }, "a single Host")]
    public async Task Bad_arguments_exit_2_with_a_message(string[] args, string message)
    {
        var (code, cli) = await CliProcess.RunAsync(args, new Dictionary<string, string> { ["HIGHLANDER_CONNECTION"] = Unreachable });
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains(message, StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task A_demo_connection_it_cannot_use_exits_2_without_an_empty_results_table()
    {
        var (code, cli) = await CliProcess.RunAsync(["demo", "--connection", "Host=a,b;Username=u"]);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains("the demo needs a single TCP host", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Output.Contains("What happened after each fault", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task A_bad_connection_string_exits_2_without_showing_it()
    {
        var (code, cli) = await CliProcess.RunAsync(["run", "--once", "--name", "x", "--connection", "Host=h;Password=pw-not-shown;Usernme=app", "--", "true"]);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains("the connection string cannot be parsed", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stderr.Contains("unknown keyword 'usernme' (did you mean Username?)", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Output.Contains("pw-not-shown", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task No_connection_configured_exits_2_and_says_how_to_give_one()
    {
        var (code, cli) = await CliProcess.RunAsync(["run", "--name", "x", "--", "true"]);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains("no connection given", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stderr.Contains("HIGHLANDER_CONNECTION", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task Options_the_library_rejects_exit_2_with_its_message_and_the_flags_named()
    {
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--name", "x", "--lease", "3s", "--heartbeat", "500ms", "--stop-timeout", "5s", "--", "true"],
            new Dictionary<string, string> { ["HIGHLANDER_CONNECTION"] = Unreachable });
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains("invalid configuration", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stderr.Contains("The lease does not fit", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stderr.Contains("StopTimeout is --stop-timeout", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Output.Contains("pw-not-shown", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task A_command_that_does_not_exist_exits_2()
    {
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--once", "--name", "x", "--", "no-such-command-here", "arg"],
            new Dictionary<string, string> { ["HIGHLANDER_CONNECTION"] = Unreachable });
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains("command not found: no-such-command-here", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task Help_lists_the_commands_and_exits_0()
    {
        var (code, cli) = await CliProcess.RunAsync(["--help"]);
        Assert.Equal(0, code);
        Assert.True(cli.Stdout.Contains("run", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stdout.Contains("status", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stdout.Contains("demo", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task Run_help_shows_the_name_and_the_command_after_the_separator_in_its_usage()
    {
        var (code, cli) = await CliProcess.RunAsync(["run", "--help"]);
        Assert.Equal(0, code);
        Assert.True(cli.Stdout.Contains("highlander run --name NAME [options] -- COMMAND [ARGS...]", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stdout.Contains("highlander run --name NAME --procfile FILE [options]", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Stdout.Contains("highlander run [options]", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stdout.Contains("--procfile", StringComparison.Ordinal), cli.Output);
    }
}

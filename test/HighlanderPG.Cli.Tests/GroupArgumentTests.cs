using HighlanderPG.Cli.Running;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// A bad procfile or group options: a clear message and exit code 2, before anything starts and before any connection
/// is made or lock taken (no server needed: the connection string points nowhere).
/// </summary>
public sealed class GroupArgumentTests : IDisposable
{
    private const string Unreachable = "Host=127.0.0.1;Port=1;Username=u;Password=pw-not-shown;Database=d";
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "hl-procfile-" + Guid.NewGuid().ToString("N")[..8]);

    public GroupArgumentTests() => Directory.CreateDirectory(_directory);

    [Theory]
    [InlineData("# only a comment\n\n   \n", "defines no member")]
    [InlineData("web: ./web\n\nnot a member line\n", "Procfile, line 3: expected 'name: command'")]
    [InlineData("web: ./web\nwe b: ./other\n", "Procfile, line 2: expected 'name: command'")]
    [InlineData("web: ./web\nworker: ./worker\n# comment\nweb: ./web2\n", "Procfile, line 4: member 'web' is already defined on line 1")]
    [InlineData("web:\n", "Procfile, line 1: member 'web' has no command")]
    [InlineData(": ./nameless\n", "Procfile, line 1: expected 'name: command'")]
    public async Task A_bad_procfile_exits_2_with_the_line_and_what_to_fix(string content, string message)
    {
        var procfile = Write(content);
        await AssertUsageAsync(["run", "--name", "g", "--procfile", procfile], message);
    }

    [Fact]
    public async Task A_missing_procfile_exits_2()
    {
        await AssertUsageAsync(["run", "--name", "g", "--procfile", Path.Combine(_directory, "Nope")], $"cannot read the procfile {Path.Combine(_directory, "Nope")}: no such file");
        await AssertUsageAsync(["run", "--name", "g", "--procfile", _directory], "it is a directory");
    }

    [Fact]
    public async Task An_unreadable_procfile_exits_2()
    {
        var procfile = Write("web: ./web\n");
        File.WriteAllBytes(procfile, [0x77, 0x3a, 0x20, 0xff, 0xfe, 0x0a]);
        await AssertUsageAsync(["run", "--name", "g", "--procfile", procfile], "it is not UTF-8 text");
    }

    [Theory]
    [InlineData(new[] { "--", "sleep", "1" }, "--procfile and '-- COMMAND' do not go together")]
    [InlineData(new[] { "--" }, "--procfile and '-- COMMAND' do not go together")]
    [InlineData(new[] { "--once" }, "--once does not apply with --procfile")]
    [InlineData(new[] { "--strategy", "one-for-some" }, "one-for-some")]
    [InlineData(new[] { "--member-restart", "nope=never" }, "has no member 'nope' (its members: web, worker)")]
    [InlineData(new[] { "--member-restart", "web=sometimes" }, "'web=sometimes' is not MEMBER=POLICY")]
    [InlineData(new[] { "--member-restart", "web" }, "'web' is not MEMBER=POLICY")]
    [InlineData(new[] { "--member-restart", "web=never,web=always" }, "member 'web' is given twice")]
    public async Task Group_options_that_do_not_fit_exit_2(string[] extra, string message)
    {
        var procfile = Write("web: ./web\nworker: ./worker\n");
        await AssertUsageAsync(["run", "--name", "g", "--procfile", procfile, .. extra], message);
    }

    [Theory]
    [InlineData("--strategy", "one-for-all")]
    [InlineData("--member-restart", "web=never")]
    [InlineData("--no-prefix", null)]
    public async Task Group_options_without_a_procfile_exit_2(string option, string? value)
    {
        string[] args = value is null ? ["run", "--name", "g", option, "--", "true"] : ["run", "--name", "g", option, value, "--", "true"];
        await AssertUsageAsync(args, $"{option} only applies with --procfile");
    }

    [Fact]
    public void The_procfile_format_is_foremans()
    {
        var members = Procfile.Parse("# comment\r\n\r\nweb: bundle exec puma -p $PORT\n  worker_2:x\r\nclock-1:   sh -c 'a: b'  \n   # indented comment\n", "P");
        Assert.Equal(
            [new GroupMember("web", "bundle exec puma -p $PORT", 3), new GroupMember("worker_2", "x", 4), new GroupMember("clock-1", "sh -c 'a: b'", 5)],
            members);
        Assert.Throws<ProcfileException>(() => Procfile.Parse(new string('x', 64) + ": true", "P"));
    }

    private string Write(string content)
    {
        var path = Path.Combine(_directory, "Procfile");
        File.WriteAllText(path, content);
        return path;
    }

    private static async Task AssertUsageAsync(string[] args, string message)
    {
        var (code, cli) = await CliProcess.RunAsync(args, new Dictionary<string, string> { ["HIGHLANDER_CONNECTION"] = Unreachable });
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.True(cli.Stderr.Contains(message, StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Logged(HighlanderEventIds.RunContending), cli.Output); // nothing started, no lock contended for
        Assert.False(cli.Output.Contains("pw-not-shown", StringComparison.Ordinal), cli.Output);
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}

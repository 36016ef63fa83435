namespace HighlanderPG.Cli.Diagnostics;

/// <summary>Messages of the CLI itself to the user (errors, outcomes), on standard error, prefixed with the program's name.</summary>
internal static class Say
{
    public static void Error(string message) => Console.Error.WriteLine($"highlander: {message}");

    public static void Error(string command, string message) => Console.Error.WriteLine($"highlander {command}: {message}");
}

using System.Globalization;
using System.Text;

namespace HighlanderPG.Cli.Running;

/// <summary>One member of a group: a line <c>name: command line</c> of a Procfile.</summary>
/// <param name="Name">The member's name (letters, digits, <c>_</c> and <c>-</c>, as foreman and honcho accept).</param>
/// <param name="CommandLine">What <c>/bin/sh -c</c> runs.</param>
/// <param name="Line">Its line number in the file (from 1).</param>
internal sealed record GroupMember(string Name, string CommandLine, int Line);

/// <summary>A Procfile that cannot be used; the message says where and what to fix.</summary>
internal sealed class ProcfileException(string message) : Exception(message);

/// <summary>
/// The Procfile format of foreman and honcho: one member per line, <c>name: command line</c>; blank lines and lines whose
/// first non-blank character is <c>#</c> are ignored. Unlike foreman, a line that is neither is an error (with its line
/// number), not silently skipped, and so is a name given twice.
/// </summary>
internal static class Procfile
{
    /// <summary>The longest member name accepted.</summary>
    public const int MaxNameLength = 63;

    /// <summary>Reads and parses the file at <paramref name="path"/>; throws <see cref="ProcfileException"/> with the reason.</summary>
    public static IReadOnlyList<GroupMember> Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        string text;
        try
        {
            if (Directory.Exists(path))
            {
                throw new ProcfileException($"cannot read the procfile {path}: it is a directory; give the file (e.g. {Path.Combine(path, "Procfile")})");
            }

            text = File.ReadAllText(path, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true));
        }
        catch (FileNotFoundException)
        {
            throw new ProcfileException($"cannot read the procfile {path}: no such file");
        }
        catch (DirectoryNotFoundException)
        {
            throw new ProcfileException($"cannot read the procfile {path}: no such directory");
        }
        catch (UnauthorizedAccessException)
        {
            throw new ProcfileException($"cannot read the procfile {path}: permission denied");
        }
        catch (DecoderFallbackException)
        {
            throw new ProcfileException($"cannot read the procfile {path}: it is not UTF-8 text");
        }
        catch (IOException ex)
        {
            throw new ProcfileException($"cannot read the procfile {path}: {ex.Message}");
        }

        return Parse(text, path);
    }

    /// <summary>Parses Procfile text; <paramref name="source"/> names it in messages.</summary>
    public static IReadOnlyList<GroupMember> Parse(string text, string source)
    {
        ArgumentNullException.ThrowIfNull(text);
        var members = new List<GroupMember>();
        var lines = text.Split('\n');
        for (var index = 0; index < lines.Length; index++)
        {
            var number = index + 1;
            var line = lines[index].TrimEnd('\r').Trim();
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }

            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var name = colon < 0 ? line : line[..colon];
            if (colon <= 0 || !name.All(IsNameChar))
            {
                // The line itself is not repeated: it may be a command line with a secret in it (a missing "name:").
                var why = colon < 0 ? "it has no ':'" : colon == 0 ? "it starts with ':'" : "the text before its first ':' is not such a name";
                throw new ProcfileException(At(source, number, $"expected 'name: command' (the name made of letters, digits, '_' and '-'): {why} (the line is not repeated here: it may hold a secret)"));
            }

            if (name.Length > MaxNameLength)
            {
                throw new ProcfileException(At(source, number, $"the member name '{Shorten(name)}' is longer than {MaxNameLength.ToString(CultureInfo.InvariantCulture)} characters"));
            }

            var command = line[(colon + 1)..].Trim();
            if (command.Length == 0)
            {
                throw new ProcfileException(At(source, number, $"member '{name}' has no command after the ':'"));
            }

            if (members.Find(m => m.Name == name) is { } earlier)
            {
                throw new ProcfileException(At(source, number, $"member '{name}' is already defined on line {earlier.Line.ToString(CultureInfo.InvariantCulture)}; each member needs its own name"));
            }

            members.Add(new GroupMember(name, command, number));
        }

        if (members.Count == 0)
        {
            throw new ProcfileException($"the procfile {source} defines no member: give one line 'name: command' per member, e.g. 'web: ./bin/web --port 8080'");
        }

        return members;
    }

    private static bool IsNameChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '_' or '-';

    private static string At(string source, int line, string message) => $"{source}, line {line.ToString(CultureInfo.InvariantCulture)}: {message}";

    private static string Shorten(string text) => text.Length <= 60 ? text : text[..57] + "...";
}

// Package completion writes the shell completion scripts of Edgeward's binaries. A
// script knows the command words; the flags of a command it asks the binary itself
// (`PROG CMD --help`, whose flag lines start with two spaces and a dash), so it never
// falls behind a flag added later. Stdlib only.
package completion

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Bash writes a bash completion script for prog, whose commands are cmds (each one or
// two words, such as "repo init" or "status"). For zsh it is loaded through
// bashcompinit (Zsh does that).
func Bash(w io.Writer, prog string, cmds []string) {
	var tops []string
	subs := map[string][]string{}
	for _, c := range cmds {
		f := strings.Fields(c)
		if len(f) == 0 {
			continue
		}
		if !slices.Contains(tops, f[0]) {
			tops = append(tops, f[0])
		}
		if len(f) > 1 {
			subs[f[0]] = append(subs[f[0]], f[1])
		}
	}
	fn := "_" + strings.NewReplacer("-", "_").Replace(prog)
	fmt.Fprintf(w, `# bash completion for %[1]s: source it, or install it as
# /etc/bash_completion.d/%[1]s (%[1]s completion bash > …).
%[2]s() {
	local cur=${COMP_WORDS[COMP_CWORD]} top=${COMP_WORDS[1]} sub="" cmd
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=($(compgen -W %[3]q -- "$cur"))
		return
	fi
	case "$top" in
`, prog, fn, strings.Join(tops, " "))
	for _, t := range tops {
		if len(subs[t]) > 0 {
			fmt.Fprintf(w, "\t%s) sub=%q ;;\n", t, strings.Join(subs[t], " "))
		}
	}
	fmt.Fprintf(w, `	esac
	if [ -n "$sub" ] && [ "$COMP_CWORD" -eq 2 ] && [[ "$cur" != -* ]]; then
		COMPREPLY=($(compgen -W "$sub" -- "$cur"))
		return
	fi
	cmd=$top
	if [ -n "$sub" ] && [[ " $sub " == *" ${COMP_WORDS[2]} "* ]]; then
		cmd="$top ${COMP_WORDS[2]}"
	fi
	if [[ "$cur" == -* ]]; then
		COMPREPLY=($(compgen -W "$(%[1]s $cmd --help 2>&1 | sed -n 's/^  -\([^ =]*\).*/--\1/p')" -- "$cur"))
		return
	fi
	COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o filenames -F %[2]s %[1]s
`, prog, fn)
}

// Zsh writes the bash script behind zsh's bashcompinit.
func Zsh(w io.Writer, prog string, cmds []string) {
	fmt.Fprintf(w, "# zsh completion for %s: source it from ~/.zshrc\n", prog)
	fmt.Fprintln(w, "autoload -U +X compinit && compinit")
	fmt.Fprintln(w, "autoload -U +X bashcompinit && bashcompinit")
	Bash(w, prog, cmds)
}

// Write writes the script for shell ("bash" or "zsh").
func Write(w io.Writer, shell, prog string, cmds []string) error {
	switch shell {
	case "bash":
		Bash(w, prog, cmds)
	case "zsh":
		Zsh(w, prog, cmds)
	default:
		return fmt.Errorf("completion for %q: want bash or zsh", shell)
	}
	return nil
}

/**
 * The sessions actor: the session supervisor statechart with its real effects, and the
 * login-attempt statechart it spawns, both wired to a {@linkcode SessionService}.
 * @module
 */
import { fromCallback, fromPromise } from "xstate";
import { loginMachine } from "../../machines/login.ts";
import {
  type SessionSupervisorEvent,
  sessionSupervisorMachine,
} from "../../machines/session_supervisor.ts";
import type { SessionService } from "./service.ts";

/** The login-attempt logic with real effects. */
export function createLoginLogic(service: SessionService) {
  const fx = service.effects;
  return loginMachine.provide({
    actors: {
      checkCredentials: fromPromise(({ input }) => fx.checkCredentials(input)),
      // One actor for every method: the method in the input picks the verifier.
      verifyCode: fromPromise(({ input }) => fx.verifiers[input.method](input)),
      issueSession: fromPromise(({ input }) => fx.issueSession(input)),
      writeJournal: fromPromise(({ input }) => fx.writeJournal(input)),
    },
  });
}

/** The session supervisor logic with real effects (what the runtime supervisor spawns). */
export function createSessionSupervisorLogic(service: SessionService) {
  const fx = service.effects;
  return sessionSupervisorMachine.provide({
    actors: {
      login: createLoginLogic(service),
      cleanup: fromPromise(() => fx.cleanup()),
      probe: fromPromise(() => fx.probe()),
      feed: fromCallback(({ sendBack }) =>
        fx.subscribe((event: SessionSupervisorEvent) => sendBack(event))
      ),
    },
  });
}

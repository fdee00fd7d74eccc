"""The instruction pool: prompts asked about a clip, grouped by category, sampled per clip.

Design choices:
- Categories say which clips a prompt fits: speech-only ones (what was said, gender, pitch,
  pace, answer the question) are never asked about a beep, sound-only ones never about speech,
  and the noise category only about clips that are noisy or clean speech (both are answerable).
- Sampling is a seeded `random.Random` per clip (`sample_prompt(record, rng)`), so datagen is
  deterministic and resumable: the prompt of a clip does not depend on batch order.
- Phrasing varies a lot on purpose (questions, imperatives, casual and formal) so the
  connector learns the attribute, not one wording. Attribute questions come open ("Describe the
  pitch of the voice.") and closed, naming the choices, with or without a brevity request
  ("Low, normal or high voice? One word only."): a user asks both ways, and the closed form
  gives short, label-bearing targets.
- Categories are weighted (`CATEGORY_WEIGHTS`): the attributes the connector must carry from
  the audio (voice, pace, loudness, noise, sound) are asked about more often than the transcript,
  which the LLM already receives as text.
- The `assistant` category is the runtime's own spoken-question turn (`ASSISTANT_SYSTEM` +
  `ASSISTANT_PROMPT`, what `desta-edge ask` sends): its target is the backbone's answer to the
  transcript asked in text, so the connector learns to leave spoken question answering as good
  as the text backbone's.
"""

from __future__ import annotations

import random
from typing import Any, Collection, Mapping

from desta_edge.runtime.prompt import ASSISTANT_PROMPT

DESCRIBE = [
    "Describe the audio.", "What do you hear in this recording?", "Describe this clip in detail.",
    "Give a short description of the audio.", "What can you tell me about this audio?",
    "Describe everything you notice in this recording.", "Please describe what this clip sounds like.",
    "Tell me about this audio clip.", "What is going on in this recording?", "Characterize this audio.",
    "Listen and describe the recording.", "How would you describe this sound clip to someone who cannot hear it?",
    "Write a caption for this audio.", "Provide a one-sentence description of the clip.",
    "What kind of audio is this?", "Give me an overview of the recording.",
    "Describe the audio, including any background sounds.", "In a few words, what is this audio?",
    "Explain what this recording contains.", "Describe the acoustic characteristics of this clip.",
]
TRANSCRIBE = [
    "What did the speaker say?", "Transcribe the speech.", "Write down exactly what was said.",
    "What are the spoken words?", "Repeat what you heard, word for word.", "What is being said in the audio?",
    "Give me a transcript of the recording.", "Can you tell me what the person said?",
    "Please write out the words spoken in this clip.", "What sentence is spoken here?",
    "Quote the speaker.", "Convert this speech to text.", "What's the speaker saying?",
    "Type out the speech in this audio.", "What words do you hear?", "Tell me the exact words of the speaker.",
    "Transcribe the audio, then say how many words it has.", "What was the message in the recording?",
    "Write the spoken content in plain text.", "Which words did the speaker use?",
]
SPEAKER = [
    "Who is speaking and how do they sound?", "Describe the speaker's voice.", "Describe how the person speaks.",
    "What can you tell about the speaker from their voice?", "Describe the speaker: voice, pitch, pace and loudness.",
    "How does the speaker sound?", "Give a profile of the speaker's voice.", "Tell me about the voice in this clip.",
    "What is the speaking style in this recording?", "Describe the speaker's delivery.",
    "Describe both what is said and how it is said.", "Characterize the voice you hear.",
    "What are the vocal qualities of the speaker?", "How would you describe this person's way of talking?",
    "Summarize the speaker's voice characteristics.", "What does the speaker's voice sound like?",
    "Describe the speaker and the recording conditions.", "Describe the talker's voice in a sentence.",
]
GENDER = [
    "Is the speaker male or female?", "What is the gender of the speaker?", "Does this sound like a man or a woman?",
    "Is it a man or a woman talking?", "Guess the speaker's gender from the voice.",
    "Would you say the voice is male or female?", "Who is talking, a man or a woman?",
    "What gender does the voice suggest?", "Is this a male voice?", "Is this a female voice?",
    "Tell me whether the speaker is a man or a woman.", "From the voice alone, is the speaker male or female?",
    "Identify the speaker's gender.", "Man or woman: who is speaking?", "Does the voice belong to a woman?",
    "Does the voice belong to a man?", "What is the likely gender of the person speaking?",
]
PITCH = [
    "How high or low is the speaker's voice?", "Is the speaker's pitch high, normal or low?",
    "Describe the pitch of the voice.", "Does the speaker have a deep voice?", "Is the voice high-pitched?",
    "What is the pitch of the speaker's voice like?", "Would you call this voice low-pitched?",
    "Rate the pitch of the voice: low, normal or high.", "Is the speaker's voice higher or lower than usual?",
    "How deep is this voice?", "Comment on the speaker's pitch.", "Is the tone of the voice high or low?",
    "Does the voice sound squeaky or deep?", "Tell me about the pitch of the voice.",
    "What pitch range is the speaker using?", "Is the voice pitched high for this kind of speaker?",
    "Classify the pitch of this voice.",
]
SPEED = [
    "How fast is the person speaking?", "Is the speaker talking fast or slow?", "Describe the speaking rate.",
    "What is the pace of the speech?", "Is the speech rushed?", "Does the speaker talk slowly?",
    "Rate the speaking speed: slow, normal or fast.", "How quickly does the speaker talk?",
    "Is the tempo of the speech fast?", "Comment on how fast the words come.", "Is the speaker in a hurry?",
    "Would you say the speaker is speaking at a normal pace?", "How would you describe the speed of the speech?",
    "Is this slow, relaxed speech or fast speech?", "Tell me the speaking pace.", "Classify the speech rate.",
    "Does the speech feel quick or unhurried?",
]
VOLUME = [
    "How loud is the speaker?", "Is the audio loud or quiet?", "Describe the volume of the speech.",
    "Is the speaker talking softly?", "Is the voice loud?", "Rate the loudness: quiet, normal or loud.",
    "How loud is this recording?", "Does the speaker speak quietly or loudly?", "Comment on the volume.",
    "Would I need to turn the volume up to hear this?", "Is the speech at a normal volume?",
    "What is the loudness level of the voice?", "Is this clip quiet?", "Is the speaker shouting or whispering?",
    "Tell me how loud the voice is.", "Classify the volume of the speech.", "How strong is the voice in this recording?",
]
NOISE = [
    "Is there background noise?", "Is the recording clean or noisy?", "How noisy is this audio?",
    "Describe the background of the recording.", "Is there any noise besides the voice?",
    "Rate the recording quality.", "Is the speech easy to hear over the background?",
    "Would you call this a clean recording?", "Is there interference in the audio?", "How clear is the recording?",
    "What is the noise level in this clip?", "Is the audio noisy?", "Does the recording have background sounds?",
    "Is the signal clean?", "Describe the recording conditions.", "Could noise make this hard to understand?",
    "Comment on the audio quality.",
]
SOUND = [
    "What sound is this?", "Identify the sound.", "What kind of sound do you hear?", "Name the sound in the clip.",
    "What is making this sound?", "Is this speech, music or something else?", "Classify this sound.",
    "What type of audio is this?", "Describe the sound you hear.", "Is anyone speaking in this clip?",
    "What noise is in the recording?", "Is this a tone, a noise or something else?", "What is this audio signal?",
    "Tell me what this sound is.", "Which category does this sound belong to?", "Does this clip contain a voice?",
    "Is there any speech in this audio?", "What would you call this sound?",
]
SUMMARIZE = [
    "Summarize the audio.", "Summarize the recording in one sentence.", "Give me the gist of the clip.",
    "What is the main point of the recording?", "Briefly summarize what you heard.", "Sum up this clip.",
    "Give a short summary, including what was said.", "What is the key message?", "Summarize in a few words.",
    "Provide a brief summary of this audio.", "What is the recording about?", "TL;DR of the audio, please.",
    "In one line, what is this clip?", "Summarize the content and the speaker.", "What is this clip mainly about?",
    "Give a concise summary of the audio.", "What is the topic of the recording?",
]
ANSWER = [
    "Answer the question in the audio.", "Please answer the spoken question.", "Respond to the speaker's question.",
    "What is the answer to what was asked?", "Reply to the question you heard.", "Answer briefly.",
    "The speaker asked something. What is your answer?", "Give a short answer to the question in the recording.",
    "Answer the question asked in this clip.", "What would you say in reply?", "Answer the spoken request.",
    "Respond to the speaker.", "Answer what the person asked.", "Please respond to the audio.",
    "Listen to the question and answer it.", "What is the correct answer to the spoken question?",
    "Answer the question in one sentence.", "Help the speaker with their question.",
]
REASONING = [
    "What might the speaker want?", "Why might someone say this?", "What is the speaker's intention?",
    "How should an assistant respond to this?", "What could happen next in this situation?",
    "Is the speaker asking, requesting or stating something?", "Is this a question, a command or a statement?",
    "What would be a good follow-up question for the speaker?", "Where might this recording have been made?",
    "Based on the voice and words, what is the context?", "Does the speaker seem to need help?",
    "What action should be taken after hearing this?", "Is the speaker's voice easy to understand? Why?",
    "What does the speaker's tone suggest?", "Who might the speaker be talking to?",
    "Would this be a good recording for a voice assistant? Explain.", "What is notable about this recording?",
    "Is there anything unusual about how this was said?", "Write a reply the speaker would find helpful.",
]

# closed forms of the attribute questions: the choices are named in the question
CLOSED: dict[str, list[str]] = {
    "gender": ["Male or female?", "Is the voice a man's or a woman's?", "Which is it: a male or a female speaker?",
               "Say whether the speaker is male or female.", "Speaker gender (male/female)?",
               "Was that said by a man or by a woman?"],
    "pitch": ["Low, normal or high voice?", "Is the pitch of the voice low, normal or high?",
              "Which best fits the voice's pitch: low, normal, or high?", "Pitch of the voice (low/normal/high)?",
              "Say whether the voice sounds low, normal or high.", "Would you call the voice deep, average or high?"],
    "speed": ["Slow, normal or fast speech?", "Is the speaking pace slow, normal or fast?",
              "Which fits the speaking rate: slow, normal, or fast?", "Speech rate (slow/normal/fast)?",
              "Say whether the person talks slowly, at a normal pace, or quickly.", "Is the talking quick, average or slow?"],
    "volume": ["Quiet, normal or loud?", "Is the voice quiet, normal or loud?",
               "Which fits the loudness: quiet, normal, or loud?", "Volume of the speech (quiet/normal/loud)?",
               "Say whether the speech is soft, normal or loud.", "Is it loud, quiet, or in between?"],
    "noise": ["Clean or noisy?", "Is the audio clean or noisy?", "Recording quality (clean/noisy)?",
              "Say whether the recording is clean or noisy.", "Is there noise, or is it clean?",
              "Noisy recording or clean recording?"],
    "sound": ["Which sound is it: a tone, beep, chirp, clicks, noise, hum, chord or silence?",
              "Tone, beep, chirp, clicks, noise, hum, chord or silence: which one?",
              "Name the sound type (tone, beep, chirp, clicks, noise, hum, chord, silence).",
              "Is it a tone, a beep, a chirp, clicks, noise, a hum, a chord, or silence?",
              "Pick the sound: tone, beep, chirp, clicks, noise, hum, chord or silence.",
              "What is this: tone, beep, chirp, clicks, noise, hum, chord, or silence?"],
}
BREVITY = ["", "", "One word only.", "Answer with one word.", "Reply in a single word.", "Just the answer, please.",
           "Be brief.", "Keep it short."]  # appended to closed questions ("" = nothing)
CLOSED_FRACTION = 0.5  # share of attribute questions asked in closed form

POOL: dict[str, list[str]] = {
    "describe": DESCRIBE, "transcribe": TRANSCRIBE, "speaker": SPEAKER, "gender": GENDER, "pitch": PITCH,
    "speed": SPEED, "volume": VOLUME, "noise": NOISE, "sound": SOUND, "summarize": SUMMARIZE,
    "answer": ANSWER, "reasoning": REASONING,
}
ASSISTANT = "assistant"  # the runtime's spoken-question turn (ASSISTANT_PROMPT); see the module notes
SPEECH_CATEGORIES = ("describe", "transcribe", "speaker", "gender", "pitch", "speed", "volume", "noise",
                     "summarize", "reasoning")
SOUND_CATEGORIES = ("describe", "sound", "summarize")
QUESTION_CATEGORIES = ("answer", ASSISTANT)  # added for spoken questions
CATEGORY_WEIGHTS = {"gender": 2.0, "pitch": 2.0, "speed": 2.0, "volume": 2.0, "noise": 2.0, "sound": 3.0,
                    "speaker": 1.5, "describe": 1.5, ASSISTANT: 3.0}  # others weigh 1
LABEL_OF = {"gender": "gender", "pitch": "pitch", "speed": "speed", "volume": "volume"}  # needs that label


def all_prompts() -> list[str]:
    closed = [f"{q} {b}".strip() for qs in CLOSED.values() for q in qs for b in set(BREVITY)]
    return [p for prompts in POOL.values() for p in prompts] + closed + [ASSISTANT_PROMPT]


def categories_for(record: Mapping[str, Any]) -> list[str]:
    """The categories whose prompts can be answered from this clip's description."""
    if record.get("kind") == "sound" or record.get("transcript") is None:
        return list(SOUND_CATEGORIES)
    cats = [c for c in SPEECH_CATEGORIES if c not in LABEL_OF or record.get(LABEL_OF[c])]
    if record.get("sentence_type") == "question":
        cats += QUESTION_CATEGORIES
    return cats


def all_categories() -> list[str]:
    return list(POOL) + [ASSISTANT]


def sample_prompt(record: Mapping[str, Any], rng: random.Random,
                  only: Collection[str] | None = None) -> tuple[str, str] | None:
    """(category, prompt) for one clip; with `only`, among those categories (None if none fits the clip)."""
    cats = [c for c in categories_for(record) if only is None or c in only]
    if not cats:
        return None
    category = rng.choices(cats, weights=[CATEGORY_WEIGHTS.get(c, 1.0) for c in cats])[0]
    if category == ASSISTANT:
        return category, ASSISTANT_PROMPT
    if category in CLOSED and rng.random() < CLOSED_FRACTION:
        return category, f"{rng.choice(CLOSED[category])} {rng.choice(BREVITY)}".strip()
    return category, rng.choice(POOL[category])
